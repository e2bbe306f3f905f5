//! Kubernetes manifests for one teddyflow cluster: a headless Service, a StatefulSet of N
//! processes forming one timely cluster, and a ConfigMap with `teddyflow.toml`. Written by
//! `teddyflow plan --emit k8s DIR` for the size a plan recommends; `deploy/k8s/` holds
//! them for [`Size::example`].
//!
//! Why each choice (also in docs/operations.md):
//! - `podManagementPolicy: Parallel`: a timely cluster forms only when every process is
//!   up, so pod 0 must not wait for its own readiness before pod 1 starts.
//! - `publishNotReadyAddresses: true`: processes find each other by the headless
//!   Service's DNS names before any of them is ready.
//! - `updateStrategy: OnDelete`: processes of different sizes cannot form one cluster, so
//!   an apply never restarts pods one by one; a resize stops the set and starts it again.
//! - The process index is the pod ordinal; `deploy/entrypoint.sh` writes the hostfile.

use std::path::Path;

use anyhow::Context;

/// The image's config, the one the ConfigMap carries.
const CONFIG: &str = include_str!("../../configs/teddyflow.toml");

pub const TIMELY_PORT: u16 = 2101;
pub const HTTP_PORT: u16 = 9464;

#[derive(Debug, Clone, PartialEq)]
pub struct Size {
    pub name: String,
    pub image: String,
    pub brokers: String,
    pub processes: usize,
    pub workers: usize,
    /// CPU cores requested per pod.
    pub cpu: f64,
    pub memory_mib: u64,
}

impl Size {
    /// What `deploy/k8s/` holds: two processes of one worker on two cores each.
    pub fn example() -> Size {
        Size {
            name: "teddyflow".into(),
            image: "teddyflow:latest".into(),
            brokers: "kafka:9092".into(),
            processes: 2,
            workers: 1,
            cpu: 2.0,
            memory_mib: MEMORY_MIB,
        }
    }
}

/// Peak RSS with every model loaded is about 800 MiB (docs/performance.md); requests leave
/// room for the reply model's prepared conversations and a burst's queued audio.
pub const MEMORY_MIB: u64 = 1536;

/// (file name, YAML) of every manifest.
pub fn manifests(s: &Size) -> Vec<(&'static str, String)> {
    vec![
        ("configmap.yaml", configmap(s)),
        ("service.yaml", service(s)),
        ("statefulset.yaml", statefulset(s)),
    ]
}

pub fn write(dir: &Path, s: &Size) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    for (file, yaml) in manifests(s) {
        let path = dir.join(file);
        std::fs::write(&path, yaml).with_context(|| path.display().to_string())?;
    }
    Ok(())
}

const HEADER: &str = "# Written by `teddyflow plan --emit k8s`; see docs/operations.md.\n";

fn configmap(s: &Size) -> String {
    let body: String = CONFIG
        .lines()
        .map(|l| {
            if l.is_empty() {
                "\n".into()
            } else {
                format!("    {l}\n")
            }
        })
        .collect();
    format!(
        "{HEADER}apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}-config\n  labels:\n    app.kubernetes.io/name: {name}\ndata:\n  teddyflow.toml: |\n{body}",
        name = s.name
    )
}

fn service(s: &Size) -> String {
    format!(
        r#"{HEADER}# Headless: each pod gets a stable DNS name, <pod>.{name}.<namespace>.svc.cluster.local,
# published before it is ready so the timely processes can find each other.
apiVersion: v1
kind: Service
metadata:
  name: {name}
  labels:
    app.kubernetes.io/name: {name}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector:
    app.kubernetes.io/name: {name}
  ports:
    - name: timely
      port: {TIMELY_PORT}
      targetPort: timely
    - name: http
      port: {HTTP_PORT}
      targetPort: http
"#,
        name = s.name
    )
}

/// The CPU limit equals the request: it becomes the container's cgroup quota, which each
/// process reads as its core budget (so its threads fit the cores the plan gave it, instead
/// of one per core of the node); with the memory limit equal too, the pod is Guaranteed
/// and a static CPU manager gives it whole cores of its own.
fn statefulset(s: &Size) -> String {
    let cpu = format!("{}m", (s.cpu * 1000.0).round() as u64);
    format!(
        r#"{HEADER}# {processes} process(es) x {workers} worker(s): one timely cluster. Resize: scale to 0, apply
# manifests for the new size, as docs/operations.md says (processes must agree on the size).
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {name}
  labels:
    app.kubernetes.io/name: {name}
spec:
  serviceName: {name}
  replicas: {processes}
  podManagementPolicy: Parallel
  updateStrategy:
    type: OnDelete
  selector:
    matchLabels:
      app.kubernetes.io/name: {name}
  template:
    metadata:
      labels:
        app.kubernetes.io/name: {name}
      annotations:
        prometheus.io/scrape: "true"
        prometheus.io/port: "{HTTP_PORT}"
        prometheus.io/path: /metrics
    spec:
      terminationGracePeriodSeconds: 40
      containers:
        - name: teddyflow
          image: {image}
          imagePullPolicy: IfNotPresent
          command: ["/opt/teddyflow/entrypoint.sh"]
          env:
            - name: TEDDYFLOW_PROCESSES
              value: "{processes}"
            - name: TEDDYFLOW_WORKERS
              value: "{workers}"
            - name: TEDDYFLOW_BROKERS
              value: "{brokers}"
            - name: TEDDYFLOW_SERVICE
              value: {name}
            - name: POD_NAMESPACE
              valueFrom:
                fieldRef:
                  fieldPath: metadata.namespace
          ports:
            - name: timely
              containerPort: {TIMELY_PORT}
            - name: http
              containerPort: {HTTP_PORT}
          resources:
            requests:
              cpu: {cpu}
              memory: {memory}Mi
            limits:
              cpu: {cpu}
              memory: {memory}Mi
          startupProbe:
            httpGet:
              path: /healthz
              port: http
            periodSeconds: 5
            failureThreshold: 60
          livenessProbe:
            httpGet:
              path: /healthz
              port: http
            periodSeconds: 10
            failureThreshold: 3
          readinessProbe:
            httpGet:
              path: /readyz
              port: http
            periodSeconds: 5
          volumeMounts:
            - name: config
              mountPath: /etc/teddyflow
              readOnly: true
      volumes:
        - name: config
          configMap:
            name: {name}-config
"#,
        name = s.name,
        image = s.image,
        brokers = s.brokers,
        processes = s.processes,
        workers = s.workers,
        memory = s.memory_mib,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_manifests_are_the_example_size() {
        // deploy/k8s is what `plan --emit k8s` writes for Size::example(): regenerate it
        // with `cargo test ... -- --ignored regenerate_deploy_k8s` after changing this file.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s");
        for (file, yaml) in manifests(&Size::example()) {
            let committed = std::fs::read_to_string(dir.join(file)).unwrap();
            assert_eq!(
                committed, yaml,
                "deploy/k8s/{file} differs from the generator"
            );
        }
    }

    #[test]
    #[ignore = "writes deploy/k8s"]
    fn regenerate_deploy_k8s() {
        write(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s"),
            &Size::example(),
        )
        .unwrap();
    }

    #[test]
    fn sizes_reach_replicas_env_and_requests() {
        let s = Size {
            processes: 5,
            workers: 3,
            cpu: 1.5,
            ..Size::example()
        };
        let yaml = statefulset(&s);
        assert!(yaml.contains("  replicas: 5\n"));
        assert!(yaml.contains("name: TEDDYFLOW_PROCESSES\n              value: \"5\""));
        assert!(yaml.contains("name: TEDDYFLOW_WORKERS\n              value: \"3\""));
        assert!(yaml.contains("cpu: 1500m"));
        let cm = configmap(&s);
        assert!(
            cm.contains("    [engine]\n"),
            "the whole config, indented under the key"
        );
    }
}
