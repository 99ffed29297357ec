//! The shared endpoint's manifests (deploy/kubernetes/shared/) are valid Kubernetes objects, by
//! a real validator: kubernetes-validate from PyPI (its schemas are bundled, so validation itself
//! is offline), installed into target/pytools by this test when it is not importable there.

use std::path::{Path, PathBuf};
use std::process::Command;

use maskinporten_broker::config::Settings;

/// The version installed when missing.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// The oldest Kubernetes the manifests are meant for (native `topologySpreadConstraints`,
/// `policy/v1` PodDisruptionBudgets, projected tokens are all older).
const KUBERNETES_VERSION: &str = "1.30.0";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `python3` with target/pytools on its path, kubernetes-validate installed there if missing.
fn python() -> Command {
    let tools = repo().join("target").join("pytools");
    let command = || {
        let mut c = Command::new("python3");
        c.env("PYTHONPATH", &tools)
            .stdin(std::process::Stdio::null());
        c
    };
    let importable = command()
        .args(["-c", "import kubernetes_validate"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !importable {
        let installed = command()
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
                "--target",
            ])
            .arg(&tools)
            .arg(KUBERNETES_VALIDATE)
            // Debian's python marks itself externally managed; a --target directory is ours.
            .env("PIP_BREAK_SYSTEM_PACKAGES", "1")
            .output()
            .expect("python3 runs (the manifest test needs python3 with pip)");
        assert!(
            installed.status.success(),
            "pip install {KUBERNETES_VALIDATE} into {} failed: {}",
            tools.display(),
            String::from_utf8_lossy(&installed.stderr)
        );
    }
    command()
}

fn manifests() -> Vec<PathBuf> {
    let dir = repo().join("deploy/kubernetes/shared");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        // kustomize's own file is not a Kubernetes object.
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect();
    files.sort();
    files
}

fn validate(files: &[PathBuf]) -> std::process::Output {
    python()
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "--quiet",
            "-k",
            KUBERNETES_VERSION,
        ])
        .args(files)
        .output()
        .unwrap()
}

#[test]
fn the_shared_endpoints_manifests_validate_against_the_kubernetes_schemas() {
    let files = manifests();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for wanted in [
        "caller-example.yaml",
        "configmap.yaml",
        "deployment.yaml",
        "networkpolicy.yaml",
        "poddisruptionbudget.yaml",
        "service.yaml",
    ] {
        assert!(names.iter().any(|n| n == wanted), "{wanted} in {names:?}");
    }
    let out = validate(&files);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every file the kustomization names exists and was validated.
    let kustomization =
        std::fs::read_to_string(repo().join("deploy/kubernetes/shared/kustomization.yaml"))
            .unwrap();
    for line in kustomization
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
    {
        assert!(
            names.iter().any(|n| n == line),
            "kustomization names {line}"
        );
    }
}

#[test]
fn the_validator_refuses_a_broken_manifest() {
    // The validator is real: a Deployment with a wrong type and an unknown field fails.
    let dir = tempfile::tempdir().unwrap();
    let deployment =
        std::fs::read_to_string(repo().join("deploy/kubernetes/shared/deployment.yaml")).unwrap();
    let broken = dir.path().join("broken.yaml");
    // Refused for the fault put in, not for any crash: exit 1 and the fault named.
    let refused_for = |out: std::process::Output, fault: &str| {
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "{said}");
        assert!(
            said.contains(fault) && !said.contains("Traceback"),
            "{fault}: {said}"
        );
    };
    std::fs::write(&broken, deployment.replace("replicas: 2", "replicas: two")).unwrap();
    refused_for(validate(std::slice::from_ref(&broken)), "two");
    std::fs::write(
        &broken,
        deployment.replace("maxSkew: 1", "maxSkew: 1\n          maxSkewed: 2"),
    )
    .unwrap();
    // --strict refuses unknown fields.
    refused_for(validate(&[broken]), "maxSkewed");
}

/// A file of the repository, as text.
fn text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn the_shared_config_and_the_caller_agree_on_issuer_audience_and_identity() {
    let dir = repo().join("deploy/kubernetes/shared");
    let configmap: serde_json::Value = serde_json::to_value(
        config::Config::builder()
            .add_source(config::File::from_str(
                &text(&dir.join("configmap.yaml")),
                config::FileFormat::Yaml,
            ))
            .build()
            .unwrap()
            .try_deserialize::<serde_json::Value>()
            .unwrap(),
    )
    .unwrap();
    let yaml = configmap["data"]["broker.yaml"].as_str().unwrap();
    let settings = Settings::from_yaml(yaml).unwrap();
    settings
        .validate()
        .expect("the shared broker.yaml is valid");
    assert!(
        !settings.listen.ip().is_loopback(),
        "shared: reachable from other pods"
    );
    let caller = text(&dir.join("caller-example.yaml"));
    assert!(
        caller.contains("audience: maskinporten-broker")
            && caller.contains("expirationSeconds: 600")
    );
    assert!(yaml.contains("audience: maskinporten-broker"));
    assert!(
        yaml.contains("system:serviceaccount:team-a:invoicing")
            && caller.contains("serviceAccountName: invoicing")
            && caller.contains("namespace: team-a")
    );
    let policy = text(&dir.join("networkpolicy.yaml"));
    let label = "maskinporten-broker.example.org/access";
    assert!(policy.contains(label) && caller.contains(label));
    let deployment = text(&dir.join("deployment.yaml"));
    assert!(deployment.contains("replicas: 2") && deployment.contains("topologySpreadConstraints"));
}
