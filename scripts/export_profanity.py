#!/usr/bin/env python3
"""Export alt-profanity-check's sklearn model to plain JSON that the Rust code reads.

usage: export_profanity.py VECTORIZER.joblib MODEL.joblib OUT.json

Runs once at set-up, inside a throw-away venv that has scikit-learn + joblib: the Rust
side never unpickles anything. The model is a TfidfVectorizer (word unigrams, token
pattern \\b\\w\\w+\\b, lowercase, l2 norm, smooth idf) feeding CalibratedClassifierCV
(sigmoid) over LinearSVC folds; the probability is the mean of the folds' sigmoids.
The export is checked against sklearn's own predict_proba before it is written.
"""
import json
import sys

import joblib
import numpy as np


def export(vec, model):
    p = vec.get_params()
    assert p["analyzer"] == "word" and p["ngram_range"] == (1, 1), p
    assert p["lowercase"] and p["norm"] == "l2" and not p["sublinear_tf"], p
    assert p["token_pattern"] == r"(?u)\b\w\w+\b", p["token_pattern"]
    assert model.method == "sigmoid", model.method
    vocab = sorted(vec.vocabulary_.items(), key=lambda kv: kv[1])
    folds = []
    for cc in model.calibrated_classifiers_:
        (cal,) = cc.calibrators
        folds.append({
            "coef": [float(x) for x in cc.estimator.coef_[0]],
            "intercept": float(cc.estimator.intercept_[0]),
            # sklearn's _SigmoidCalibration: p = 1 / (1 + exp(a * f + b))
            "a": float(cal.a_),
            "b": float(cal.b_),
        })
    return {
        "source": "alt-profanity-check==1.9.1",
        "vocab": [w for w, _ in vocab],
        "idf": [float(x) for x in vec.idf_],
        "folds": folds,
    }


def reference(out, texts):
    """Recompute the probability from the export alone, the way the Rust code does."""
    import re
    index = {w: i for i, w in enumerate(out["vocab"])}
    probs = []
    for t in texts:
        counts = {}
        for tok in re.findall(r"(?u)\b\w\w+\b", t.lower()):
            if tok in index:
                counts[index[tok]] = counts.get(index[tok], 0) + 1
        w = {i: c * out["idf"][i] for i, c in counts.items()}
        norm = sum(v * v for v in w.values()) ** 0.5 or 1.0
        ps = []
        for f in out["folds"]:
            d = f["intercept"] + sum(v / norm * f["coef"][i] for i, v in w.items())
            ps.append(1.0 / (1.0 + np.exp(f["a"] * d + f["b"])))
        probs.append(float(np.mean(ps)))
    return probs


def main():
    vec_path, model_path, out_path = sys.argv[1:]
    vec, model = joblib.load(vec_path), joblib.load(model_path)
    out = export(vec, model)
    texts = ["I hate broccoli", "my dog is sick and I am sad", "you are a stupid idiot",
             "I love my teddy bear", "what the hell", ""]
    want = model.predict_proba(vec.transform(texts))[:, 1]
    got = reference(out, texts)
    assert np.allclose(want, got, atol=1e-6), (want, got)
    with open(out_path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
