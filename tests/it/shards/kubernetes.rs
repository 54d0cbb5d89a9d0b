//! deploy/kubernetes/: the manifests parse and agree with regkeeper (its
//! image, subcommand, flags, port, paths and config validation).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use super::str_of;
use crate::support::*;

/// One manifest of deploy/kubernetes/, as JSON.
fn manifest(file: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// The pod's mount named `volume`.
fn mount<'a>(container: &'a serde_json::Value, volume: &str) -> &'a serde_json::Value {
    container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume)
        .unwrap_or_else(|| panic!("no mount of volume {volume}"))
}

/// The manifests parse, kustomization lists them all, and they name only
/// what regkeeper really uses: its image and subcommand, the listen port of
/// the config they ship (container port, probes, Service, ServiceMonitor),
/// /readyz and /healthz, state_dir on the volume claim, secrets as files
/// the config reads, N equal to the replicas; the config passes regkeeper's
/// own validation.
#[test]
fn kubernetes_manifests_name_only_what_regkeeper_uses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let kust = manifest("kustomization.yaml");
    let listed: BTreeSet<&str> = kust["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(str_of)
        .collect();
    let files: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed,
        files.iter().map(String::as_str).collect(),
        "kustomization lists every manifest"
    );
    let by_kind: Kinds = files
        .iter()
        .map(|f| manifest(f))
        .map(|m| (str_of(&m["kind"]).to_string(), m))
        .collect();
    for kind in [
        "ConfigMap",
        "Secret",
        "Service",
        "StatefulSet",
        "PodDisruptionBudget",
        "ServiceMonitor",
    ] {
        assert!(by_kind.contains_key(kind), "no {kind}");
    }
    let config = check_pod_and_config(&dir, &by_kind);
    check_ports_and_selectors(&by_kind, &config);
    check_state_shards_hardening(&by_kind, &config);
}

type Kinds = BTreeMap<String, serde_json::Value>;

fn pod_of(by_kind: &Kinds) -> (&serde_json::Value, &serde_json::Value) {
    let pod = &by_kind["StatefulSet"]["spec"]["template"];
    (pod, &pod["spec"]["containers"][0])
}

/// Image, subcommand and flags, the ConfigMap at `-c`, the Secret's files:
/// the config passes validation where the pod would read it.
fn check_pod_and_config(dir: &Path, by_kind: &Kinds) -> regkeeper::config::Config {
    let (pod, c) = pod_of(by_kind);
    // The image is the one deploy/kubernetes/Dockerfile builds, running the
    // user the securityContext asks for.
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(c["image"], format!("regkeeper:{version}"));
    let dockerfile = std::fs::read_to_string(dir.join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(&format!("-t regkeeper:{version} ")),
        "Dockerfile builds the image"
    );
    let uid = pod["spec"]["securityContext"]["runAsUser"]
        .as_u64()
        .unwrap();
    assert!(
        dockerfile.contains(&format!("USER {uid}:")),
        "image user {uid}"
    );

    // `run -c FILE`, with flags `regkeeper run` knows.
    let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(str_of).collect();
    assert_eq!(args[0], "run");
    let help = Command::new(regkeeper_bin())
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in args.iter().filter(|a| a.starts_with('-')) {
        assert!(
            help.contains(&format!("{flag},")) || help.contains(&format!("{flag} ")),
            "{flag}"
        );
    }
    let config_path = args[args.iter().position(|a| *a == "-c").unwrap() + 1];
    let cm_mount = mount(c, "config");
    assert_eq!(cm_mount["mountPath"], config_path);
    let cm = &by_kind["ConfigMap"];
    let config_text = str_of(&cm["data"][str_of(&cm_mount["subPath"])]);
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    let volume = |n: &str| volumes.iter().find(|v| v["name"] == n).unwrap();
    assert_eq!(
        volume("config")["configMap"]["name"],
        cm["metadata"]["name"]
    );

    // Off-cluster, where the Secret's files do not exist, `check
    // --skip-secrets` validates the ConfigMap as it is; `check` wants them.
    let tmp = tempfile::tempdir().unwrap();
    let as_is = tmp.path().join("as-is.toml");
    std::fs::write(&as_is, config_text).unwrap();
    let check = |extra: &[&str]| {
        Command::new(regkeeper_bin())
            .args(["check", "-c"])
            .arg(&as_is)
            .args(extra)
            .output()
            .unwrap()
    };
    let skipped = check(&["--skip-secrets"]);
    assert!(
        skipped.status.success(),
        "{}",
        String::from_utf8_lossy(&skipped.stderr)
    );
    assert!(String::from_utf8_lossy(&skipped.stdout).contains("secret files not read"));
    let full = check(&[]);
    assert_eq!(full.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&full.stderr).contains("cannot read"));

    // The config passes validation with the Secret's files where the pod has them.
    let secret = &by_kind["Secret"];
    assert_eq!(
        volume("secrets")["secret"]["secretName"],
        secret["metadata"]["name"]
    );
    let secrets_at = str_of(&mount(c, "secrets")["mountPath"]);
    let tmp = tempfile::tempdir().unwrap();
    for (key, value) in secret["stringData"].as_object().unwrap() {
        std::fs::write(tmp.path().join(key), str_of(value)).unwrap();
    }
    assert!(
        config_text.contains(secrets_at),
        "the config reads the mounted secrets"
    );
    let local = config_text.replace(secrets_at, &tmp.path().display().to_string());
    let file = tmp.path().join("config.toml");
    std::fs::write(&file, local).unwrap();
    let config = regkeeper::config::load(&file).unwrap_or_else(|e| panic!("{e}"));
    let check = Command::new(regkeeper_bin())
        .args(["check", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    config
}

/// The config's listen port is the container port, the probes' (on /readyz
/// and /healthz), the Service's and the ServiceMonitor's; selectors pick the pods.
fn check_ports_and_selectors(by_kind: &Kinds, config: &regkeeper::config::Config) {
    let (pod, c) = pod_of(by_kind);
    let sts = &by_kind["StatefulSet"];
    let port = config.daemon.listen.expect("metrics endpoint on").port();
    let cport = &c["ports"][0];
    assert_eq!(cport["containerPort"], port);
    let port_name = str_of(&cport["name"]);
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_eq!(c[probe]["httpGet"]["path"], path);
        assert!(c[probe]["httpGet"]["port"] == port_name || c[probe]["httpGet"]["port"] == port);
    }
    let svc = &by_kind["Service"];
    assert_eq!(svc["spec"]["clusterIP"], "None", "headless");
    assert_eq!(sts["spec"]["serviceName"], svc["metadata"]["name"]);
    let sport = &svc["spec"]["ports"][0];
    assert!(sport["targetPort"] == port_name || sport["targetPort"] == port);
    let endpoint = &by_kind["ServiceMonitor"]["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], sport["name"]);
    assert_eq!(endpoint["path"], "/metrics");

    // Selectors pick the pods.
    let labels = pod["metadata"]["labels"].as_object().unwrap();
    let selects = |sel: &serde_json::Value| {
        sel.as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    };
    assert!(selects(&svc["spec"]["selector"]));
    assert!(selects(
        &by_kind["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]
    ));
    assert!(selects(
        &by_kind["ServiceMonitor"]["spec"]["selector"]["matchLabels"]
    ));
    assert!(selects(&sts["spec"]["selector"]["matchLabels"]));
}

/// state_dir on the volume claim; N = replicas and every pod name has an
/// ordinal; non-root, read-only root filesystem, resources.
fn check_state_shards_hardening(by_kind: &Kinds, config: &regkeeper::config::Config) {
    let (pod, c) = pod_of(by_kind);
    let sts = &by_kind["StatefulSet"];
    assert_eq!(
        mount(c, "state")["mountPath"],
        config.daemon.state_dir.display().to_string()
    );
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "state"
    );
    assert_eq!(config.daemon.shard, Some(regkeeper::shard::ShardSpec::Auto));
    let replicas = sts["spec"]["replicas"].as_u64().unwrap();
    let env = c["env"].as_array().unwrap();
    let shards = env
        .iter()
        .find(|e| e["name"] == "REGKEEPER_SHARDS")
        .expect("REGKEEPER_SHARDS");
    assert_eq!(str_of(&shards["value"]), replicas.to_string());
    for k in 0..replicas {
        let host = format!("{}-{k}", str_of(&sts["metadata"]["name"]));
        let shard =
            regkeeper::shard::ShardSpec::Auto.resolve(Some(&host), Some(str_of(&shards["value"])));
        assert_eq!(shard.map(|s| u64::from(s.index)), Ok(k), "{host}");
    }
    // Events are forwarded to pod K by its StatefulSet DNS name and port.
    let peer = env
        .iter()
        .find(|e| e["name"] == "REGKEEPER_PEER_URL")
        .expect("REGKEEPER_PEER_URL");
    let port = config.daemon.listen.unwrap().port();
    assert_eq!(
        str_of(&peer["value"]),
        format!(
            "http://{}-{{shard}}.{}:{port}",
            str_of(&sts["metadata"]["name"]),
            str_of(&sts["spec"]["serviceName"])
        )
    );

    // Hardening.
    let sc = &c["securityContext"];
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert!(c["resources"]["requests"].is_object() && c["resources"]["limits"].is_object());
}

/// examples/grafana-dashboard.json works across shards: a `shard` variable
/// from `regkeeper_shard_info`, and every panel joined on it.
#[test]
fn dashboard_has_a_shard_variable_on_every_panel() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/grafana-dashboard.json");
    let d: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let vars = d["templating"]["list"].as_array().unwrap();
    let shard = vars
        .iter()
        .find(|v| v["name"] == "shard")
        .expect("a shard variable");
    assert!(str_of(&shard["definition"]).contains("regkeeper_shard_info"));
    let panels = d["panels"].as_array().unwrap();
    let mut exprs = 0;
    for p in panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            let e = str_of(&t["expr"]);
            assert!(
                e.contains("group_left (shard) regkeeper_shard_info{shard=~\"$shard\"}"),
                "{}: {e}",
                p["title"]
            );
            exprs += 1;
        }
    }
    assert!(exprs >= 10, "{exprs} panel queries");
}
