//! The container and deployment files agree with the repository they ship.
//!
//! No Docker engine or cluster is needed: the Dockerfile is read as text (instructions, stages,
//! COPY sources), the YAML files are parsed with the `config` crate the broker already uses, and
//! the image's `broker.yaml` goes through the broker's own validation. What this cannot check is
//! that the image builds and runs; that needs `docker build`.

use std::fs;
use std::path::{Path, PathBuf};

use maskinporten_broker::config::Settings;

/// The release build CI runs; the image must be built the same way, or the image ships a binary
/// CI never built (an unlocked build can pick other dependency versions).
const CI_BUILD_COMMAND: &str = "cargo build --release --locked";
/// What the build produces and the runtime stage copies.
const BINARY: &str = "target/release/maskinporten-broker";
const IMAGE_CONFIG_SOURCE: &str = "deploy/docker/broker.yaml";
const IMAGE_CONFIG_PATH: &str = "/etc/maskinporten-broker/broker.yaml";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    fs::read_to_string(repo().join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

// ---- a small Dockerfile reader -------------------------------------------------------------

/// One instruction with its continuation lines joined.
#[derive(Debug, Clone)]
struct Instruction {
    keyword: String,
    args: String,
    line: usize,
}

#[derive(Debug)]
struct Stage {
    name: Option<String>,
    base: String,
    instructions: Vec<Instruction>,
}

impl Stage {
    fn all(&self, keyword: &str) -> impl Iterator<Item = &Instruction> {
        self.instructions
            .iter()
            .filter(move |i| i.keyword == keyword)
    }

    fn last(&self, keyword: &str) -> Option<&Instruction> {
        self.all(keyword).last()
    }
}

fn instructions(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('#') || (line.is_empty() && pending.is_none()) {
            continue;
        }
        let (start, mut joined) = pending.take().unwrap_or((index + 1, String::new()));
        match line.strip_suffix('\\') {
            Some(part) => {
                joined.push_str(part);
                joined.push(' ');
                pending = Some((start, joined));
            }
            None => {
                joined.push_str(line);
                let (keyword, args) = joined
                    .split_once(char::is_whitespace)
                    .unwrap_or((&joined, ""));
                out.push(Instruction {
                    keyword: keyword.to_uppercase(),
                    args: args.trim().to_owned(),
                    line: start,
                });
            }
        }
    }
    out
}

fn stages(text: &str) -> Vec<Stage> {
    let mut stages: Vec<Stage> = Vec::new();
    for instruction in instructions(text) {
        if instruction.keyword == "FROM" {
            let words: Vec<&str> = instruction.args.split_whitespace().collect();
            let base = words
                .iter()
                .find(|w| !w.starts_with("--"))
                .expect("FROM names an image");
            let name = words
                .iter()
                .position(|w| w.eq_ignore_ascii_case("AS"))
                .and_then(|i| words.get(i + 1));
            stages.push(Stage {
                name: name.map(|n| n.to_string()),
                base: base.to_string(),
                instructions: Vec::new(),
            });
        } else {
            stages
                .last_mut()
                .unwrap_or_else(|| panic!("line {}: instruction before FROM", instruction.line))
                .instructions
                .push(instruction);
        }
    }
    stages
}

/// `["a","b"]` (exec form, no escapes needed in this Dockerfile) or `None` for shell form.
fn exec_form(args: &str) -> Option<Vec<String>> {
    let inner = args.trim().strip_prefix('[')?.strip_suffix(']')?;
    Some(
        inner
            .split(',')
            .map(|part| {
                let part = part.trim();
                part.strip_prefix('"')
                    .and_then(|p| p.strip_suffix('"'))
                    .unwrap_or_else(|| panic!("{part:?} is not a JSON string"))
                    .to_owned()
            })
            .collect(),
    )
}

/// A COPY: its flags (`--from=build`), sources and destination.
#[derive(Debug)]
struct Copy {
    from: Option<String>,
    sources: Vec<String>,
    destination: String,
    line: usize,
}

fn copies(stage: &Stage) -> Vec<Copy> {
    stage
        .all("COPY")
        .chain(stage.all("ADD"))
        .map(|i| {
            let words: Vec<String> = exec_form(&i.args)
                .unwrap_or_else(|| i.args.split_whitespace().map(str::to_owned).collect());
            let from = words
                .iter()
                .find_map(|w| w.strip_prefix("--from="))
                .map(str::to_owned);
            let mut paths: Vec<String> =
                words.into_iter().filter(|w| !w.starts_with("--")).collect();
            let destination = paths
                .pop()
                .unwrap_or_else(|| panic!("line {}: COPY without a destination", i.line));
            assert!(!paths.is_empty(), "line {}: COPY without a source", i.line);
            Copy {
                from,
                sources: paths,
                destination,
                line: i.line,
            }
        })
        .collect()
}

struct Dockerfile {
    stages: Vec<Stage>,
}

impl Dockerfile {
    fn load() -> Dockerfile {
        let stages = stages(&read("Dockerfile"));
        assert!(
            stages.len() >= 2,
            "the Dockerfile is multi-stage (build, runtime)"
        );
        Dockerfile { stages }
    }

    /// The stage that runs cargo: the first one.
    fn build(&self) -> &Stage {
        &self.stages[0]
    }

    /// The image that ships: the last stage.
    fn runtime(&self) -> &Stage {
        self.stages.last().expect("at least one stage")
    }

    /// Where the runtime stage puts the binary.
    fn binary_path(&self) -> String {
        copies(self.runtime())
            .into_iter()
            .find(|c| c.from.is_some())
            .expect("the runtime stage copies the binary from the build stage")
            .destination
    }
}

/// Strip a trailing `/` and a leading `./` from a COPY source.
fn normalise(source: &str) -> &str {
    let s = source.strip_prefix("./").unwrap_or(source);
    let s = s.strip_suffix('/').unwrap_or(s);
    if s.is_empty() { "." } else { s }
}

// ---- Dockerfile ----------------------------------------------------------------------------

#[test]
fn the_build_stage_runs_exactly_the_ci_build_command() {
    let dockerfile = Dockerfile::load();
    let build = dockerfile.build();
    assert!(
        build.base.starts_with("rust:1.95-") && build.base.contains("bookworm"),
        "build stage image: {}",
        build.base
    );
    let runs: Vec<&str> = build.all("RUN").map(|i| i.args.as_str()).collect();
    assert_eq!(
        runs,
        [CI_BUILD_COMMAND],
        "the build stage runs the CI build command and nothing else"
    );
}

#[test]
fn every_copy_source_exists_and_is_in_the_build_context() {
    let dockerfile = Dockerfile::load();
    let ignored = dockerignore();
    for stage in &dockerfile.stages {
        for copy in copies(stage).into_iter().filter(|c| c.from.is_none()) {
            for source in &copy.sources {
                let path = normalise(source);
                assert!(
                    repo().join(path).exists(),
                    "Dockerfile line {}: COPY source {source} does not exist in the repository",
                    copy.line
                );
                assert!(
                    !ignored.iter().any(|pattern| excluded_by(pattern, path)),
                    "Dockerfile line {}: COPY source {source} is excluded by .dockerignore",
                    copy.line
                );
            }
        }
    }
}

#[test]
fn copies_from_the_build_stage_take_only_the_release_binary() {
    let dockerfile = Dockerfile::load();
    let build = dockerfile.build();
    let build_name = build
        .name
        .as_deref()
        .expect("the build stage is named (AS build)");
    let workdir = build
        .last("WORKDIR")
        .map(|w| w.args.trim_end_matches('/').to_owned())
        .expect("the build stage sets WORKDIR");
    let expected = format!("{workdir}/{BINARY}");
    let from_copies: Vec<Copy> = dockerfile
        .stages
        .iter()
        .flat_map(copies)
        .filter(|c| c.from.is_some())
        .collect();
    assert!(!from_copies.is_empty(), "the runtime copies the binary");
    for copy in from_copies {
        assert_eq!(copy.from.as_deref(), Some(build_name), "line {}", copy.line);
        assert_eq!(copy.sources, [expected.as_str()], "line {}", copy.line);
    }
}

#[test]
fn the_build_needs_nothing_the_build_stage_does_not_copy() {
    let dockerfile = Dockerfile::load();
    let copied: Vec<String> = copies(dockerfile.build())
        .iter()
        .flat_map(|c| c.sources.iter().map(|s| normalise(s).to_owned()))
        .collect();
    let is_copied = |relative: &Path| {
        copied
            .iter()
            .any(|c| c == "." || relative.starts_with(Path::new(c)))
    };
    if repo().join("build.rs").exists() {
        assert!(is_copied(Path::new("build.rs")), "build.rs is not copied");
    }
    // Paths Cargo.toml names (build scripts, explicit targets, path dependencies).
    let manifest = read("Cargo.toml");
    for line in manifest.lines().map(str::trim) {
        for key in ["path", "build"] {
            if let Some(value) = line
                .strip_prefix(key)
                .and_then(|rest| rest.trim_start().strip_prefix('='))
                .and_then(|v| v.trim().strip_prefix('"'))
                .and_then(|v| v.split('"').next())
            {
                assert!(
                    is_copied(Path::new(value)),
                    "Cargo.toml names {value}, which the build stage does not copy"
                );
            }
        }
    }
    // Files compiled into the binary with include_str!/include_bytes! (test modules excepted).
    for file in rust_files(&repo().join("src")) {
        let text = fs::read_to_string(&file).unwrap();
        // A `tests.rs` file is a `#[cfg(test)] mod tests;` of its parent: test code throughout.
        let mut in_test_code = file.file_name().is_some_and(|n| n == "tests.rs");
        for line in text.lines() {
            in_test_code |= line.trim() == "#[cfg(test)]";
            for mac in ["include_str!(\"", "include_bytes!(\""] {
                let Some(rest) = line.split(mac).nth(1) else {
                    continue;
                };
                let target = rest.split('"').next().unwrap();
                let resolved = normalise_path(&file.parent().unwrap().join(target));
                let relative = resolved.strip_prefix(repo()).unwrap_or(&resolved);
                assert!(
                    in_test_code || is_copied(relative),
                    "{} includes {}, which the build stage does not copy",
                    file.display(),
                    relative.display()
                );
            }
        }
    }
}

#[test]
fn the_runtime_runs_as_a_non_root_user() {
    let dockerfile = Dockerfile::load();
    let user = dockerfile
        .runtime()
        .last("USER")
        .expect("the runtime stage sets USER")
        .args
        .clone();
    let name = user.split(':').next().unwrap_or_default();
    let ok = match name.parse::<u32>() {
        Ok(uid) => uid != 0,
        Err(_) => name == "nonroot",
    };
    assert!(ok, "USER {user} is root or not known to be non-root");
}

#[test]
fn the_runtime_exposes_8080_and_listens_on_it() {
    let dockerfile = Dockerfile::load();
    let runtime = dockerfile.runtime();
    let exposed: Vec<&str> = runtime
        .all("EXPOSE")
        .flat_map(|i| i.args.split_whitespace())
        .collect();
    assert!(
        exposed.iter().any(|p| *p == "8080" || *p == "8080/tcp"),
        "EXPOSE {exposed:?}"
    );
    let env: Vec<&str> = runtime
        .all("ENV")
        .flat_map(|i| i.args.split_whitespace())
        .collect();
    assert!(env.contains(&"BROKER__LISTEN=0.0.0.0:8080"), "ENV {env:?}");
}

#[test]
fn the_healthcheck_uses_the_healthcheck_subcommand() {
    let dockerfile = Dockerfile::load();
    let healthcheck = dockerfile
        .runtime()
        .last("HEALTHCHECK")
        .expect("the runtime stage has a HEALTHCHECK")
        .args
        .clone();
    let command = healthcheck
        .split_once("CMD ")
        .map(|(_, c)| c)
        .unwrap_or_else(|| panic!("HEALTHCHECK {healthcheck} has no CMD"));
    let argv = exec_form(command).expect("HEALTHCHECK CMD in exec form (no shell in distroless)");
    assert_eq!(argv.first(), Some(&dockerfile.binary_path()));
    assert_eq!(argv.get(1).map(String::as_str), Some("healthcheck"));
}

#[test]
fn the_entrypoint_runs_the_binary_with_the_shipped_config() {
    let dockerfile = Dockerfile::load();
    let runtime = dockerfile.runtime();
    let entrypoint = exec_form(&runtime.last("ENTRYPOINT").expect("ENTRYPOINT").args)
        .expect("ENTRYPOINT in exec form, so signals reach the broker");
    assert_eq!(
        entrypoint,
        [
            dockerfile.binary_path().as_str(),
            "--config",
            IMAGE_CONFIG_PATH
        ]
    );
    assert!(
        copies(runtime)
            .iter()
            .any(|c| c.sources == [IMAGE_CONFIG_SOURCE] && c.destination == IMAGE_CONFIG_PATH),
        "the runtime stage copies {IMAGE_CONFIG_SOURCE} to {IMAGE_CONFIG_PATH}"
    );
}

#[test]
fn dockerignore_keeps_build_output_and_git_out_of_the_context() {
    let ignored = dockerignore();
    for needed in ["target", ".git"] {
        assert!(
            ignored.iter().any(|p| excluded_by(p, needed)),
            ".dockerignore does not exclude {needed}/"
        );
    }
}

fn dockerignore() -> Vec<String> {
    read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches('/').trim_end_matches('/').to_owned())
        .collect()
}

/// Whether a .dockerignore pattern excludes `path`: exact names and directory prefixes, plus
/// `**/*.ext` suffix patterns. Enough for the patterns this repository uses.
fn excluded_by(pattern: &str, path: &str) -> bool {
    if let Some(suffix) = pattern.strip_prefix("**/*") {
        return path.ends_with(suffix);
    }
    path == pattern || path.starts_with(&format!("{pattern}/"))
}

// ---- YAML ----------------------------------------------------------------------------------

fn parse_yaml(text: &str, what: &str) -> config::Config {
    config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Yaml))
        .build()
        .unwrap_or_else(|e| panic!("{what} is not valid YAML: {e}"))
}

/// The documents of a multi-document YAML file, without those that are only comments.
fn documents(text: &str) -> Vec<String> {
    let mut documents = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            documents.push(String::new());
        } else {
            let current = documents.last_mut().unwrap();
            current.push_str(line);
            current.push('\n');
        }
    }
    documents
        .into_iter()
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(yaml_files(&path));
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
    out.sort();
    out
}

#[test]
fn compose_file_parses_and_builds_the_broker_from_this_repository() {
    let compose = parse_yaml(&read("docker-compose.yml"), "docker-compose.yml");
    assert_eq!(compose.get_string("services.broker.build").unwrap(), ".");
    assert!(compose.get_table("services.example-client").is_ok());
}

#[test]
fn every_yaml_file_under_deploy_parses() {
    let files = yaml_files(&repo().join("deploy"));
    assert!(files.len() >= 3, "deploy/ has its YAML files: {files:?}");
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        let kubernetes = file.components().any(|c| c.as_os_str() == "kubernetes");
        let docs = documents(&text);
        assert!(!docs.is_empty(), "{} is empty", file.display());
        for (n, doc) in docs.iter().enumerate() {
            let what = format!("{} (document {})", file.display(), n + 1);
            let parsed = parse_yaml(doc, &what);
            if kubernetes {
                for field in ["apiVersion", "kind"] {
                    assert!(parsed.get_string(field).is_ok(), "{what} has no {field}");
                }
            }
        }
    }
}

fn assert_valid_broker_config(yaml: &str, what: &str) {
    let settings =
        Settings::from_yaml(yaml).unwrap_or_else(|e| panic!("{what} does not load: {e}"));
    if let Err(e) = settings.validate() {
        panic!("{what} is not a valid broker configuration: {e}");
    }
}

#[test]
fn the_images_config_is_accepted_by_the_broker() {
    let yaml = read(IMAGE_CONFIG_SOURCE);
    assert!(
        yaml.lines()
            .any(|l| l.trim() == "allow_unauthenticated: true"),
        "the image listens on 0.0.0.0 and must say allow_unauthenticated: true"
    );
    // It listens on all interfaces, so it is valid only thanks to allow_unauthenticated.
    assert_valid_broker_config(&yaml, IMAGE_CONFIG_SOURCE);
    let settings = Settings::from_yaml(&yaml).unwrap();
    assert!(
        !settings.listen.ip().is_loopback(),
        "the image listens beyond loopback"
    );
}

#[test]
fn the_kubernetes_configmap_holds_a_valid_broker_config() {
    let text = read("deploy/kubernetes/configmap.yaml");
    let configmap = parse_yaml(&text, "deploy/kubernetes/configmap.yaml");
    let data = configmap.get_table("data").expect("the ConfigMap has data");
    let yaml = data
        .get("broker.yaml")
        .expect("the ConfigMap has data.broker.yaml")
        .clone()
        .into_string()
        .expect("data.broker.yaml is text");
    assert_valid_broker_config(&yaml, "the ConfigMap's broker.yaml");
    let settings = Settings::from_yaml(&yaml).unwrap();
    assert!(
        settings.listen.ip().is_loopback(),
        "the sidecar listens on loopback, so it needs no authentication"
    );
}

#[test]
fn the_benchmarks_config_is_a_valid_local_broker_on_loopback() {
    let yaml = read("bench/broker.yaml");
    assert_valid_broker_config(&yaml, "bench/broker.yaml");
    let settings = Settings::from_yaml(&yaml).unwrap();
    assert_eq!(settings.env.to_string(), "local");
    assert_eq!(settings.listen, "127.0.0.1:18080".parse().unwrap());
    // run.sh divides by the lifetime to report upstream calls per lifetime.
    let script = read("bench/run.sh");
    let in_script = script
        .lines()
        .find_map(|l| l.strip_prefix("TOKEN_LIFETIME_SECONDS="))
        .expect("bench/run.sh sets TOKEN_LIFETIME_SECONDS");
    assert_eq!(
        in_script.trim().parse::<u64>().ok(),
        Some(settings.local.token_lifetime.as_secs()),
        "bench/run.sh and bench/broker.yaml disagree on the token lifetime"
    );
}

// ---- helpers -------------------------------------------------------------------------------

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// `a/b/../c` → `a/c`, without touching the file system.
fn normalise_path(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

// ---- the reader itself ---------------------------------------------------------------------

#[test]
fn the_reader_joins_continuations_and_splits_stages() {
    let text = "# syntax=docker/dockerfile:1\nFROM rust AS build\nWORKDIR /src\nCOPY a \\\n  b ./\nFROM scratch\nCOPY --from=build /src/x /x\nENTRYPOINT [\"/x\", \"--y\"]\n";
    let stages = stages(text);
    assert_eq!(stages.len(), 2);
    assert_eq!(stages[0].name.as_deref(), Some("build"));
    let c = copies(&stages[0]);
    assert_eq!(c[0].sources, ["a", "b"]);
    assert_eq!(c[0].destination, "./");
    assert_eq!(copies(&stages[1])[0].from.as_deref(), Some("build"));
    assert_eq!(
        exec_form(&stages[1].last("ENTRYPOINT").unwrap().args).unwrap(),
        ["/x", "--y"]
    );
    assert_eq!(
        documents("a: 1\n---\n# only a comment\n---\nb: 2\n").len(),
        2
    );
}
