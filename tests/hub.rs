//! The hub client against a local stand-in for huggingface.co: a tiny HTTP/1.1 server on
//! 127.0.0.1 that answers the requests hf-hub's sync client makes (a `Range: bytes=0-0` GET
//! for the metadata — `etag`/`x-linked-etag`, `x-repo-commit`, `content-range` — then a
//! ranged GET for the bytes), with LFS files behind a redirect to a "CDN" path as on the real
//! hub. No network beyond loopback.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use tunelab::model::hub::{self, HubOptions, ModelSource};
use tunelab::model::llama::Llama;
use tunelab::model::load;

const REPO: &str = "org/tiny-model";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const COMMIT_B: &str = "89abcdef0123456789abcdef0123456789abcdef";
mod common;
use common::{tiny, SHARDS};
const SHARD_1: &str = SHARDS[0];
const SHARD_2: &str = SHARDS[1];

// ---------------------------------------------------------------------------------------------
// The stand-in hub.

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Logged {
    path: String,
    range: Option<String>,
}

/// File name -> bytes.
type Files = HashMap<String, Vec<u8>>;

/// A repo at one commit.
struct FakeRepo {
    commit: String,
    files: Files,
}

/// A canned answer.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} Whatever\r\n", self.status);
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.body.len()
        ));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

#[derive(Default)]
struct State {
    repos: HashMap<String, FakeRepo>,
    /// Exact request path -> a canned (possibly malformed) answer.
    overrides: HashMap<String, Reply>,
    log: Vec<Logged>,
}

/// FNV-1a, hex: the etag, hence the blob name in the cache.
fn etag_of(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}{:08x}", data.len())
}

fn parse_range(r: &str) -> Option<(usize, Option<usize>)> {
    let (s, e) = r.trim().strip_prefix("bytes=")?.split_once('-')?;
    let start = s.trim().parse().ok()?;
    let end = match e.trim() {
        "" => None,
        e => Some(e.parse().ok()?),
    };
    Some((start, end))
}

/// 200 with the whole body, or 206 with the requested range and `Content-Range`.
fn ranged(data: &[u8], range: Option<&str>, headers: Vec<(String, String)>) -> Reply {
    let size = data.len();
    let mut reply = Reply::new(200);
    reply.headers = headers;
    reply.headers.push(("Accept-Ranges".into(), "bytes".into()));
    match range.and_then(parse_range) {
        None => {
            reply.body = data.to_vec();
            reply
        }
        Some((start, end)) => {
            let end = end.unwrap_or(usize::MAX).min(size.saturating_sub(1));
            if start >= size || start > end {
                let mut r = Reply::new(416).header("Content-Range", &format!("bytes */{size}"));
                r.headers.extend(reply.headers);
                return r;
            }
            reply.status = 206;
            reply.headers.push((
                "Content-Range".into(),
                format!("bytes {start}-{end}/{size}"),
            ));
            reply.body = data[start..=end].to_vec();
            reply
        }
    }
}

impl State {
    fn respond(&self, path: &str, range: Option<&str>, base: &str) -> Reply {
        if let Some(r) = self.overrides.get(path) {
            return r.clone();
        }
        if let Some(etag) = path.strip_prefix("/cdn/") {
            // The "CDN" an LFS file redirects to: bytes by etag, no repo headers.
            let found = self
                .repos
                .values()
                .flat_map(|r| r.files.values())
                .find(|d| etag_of(d) == etag);
            return match found {
                Some(d) => ranged(d, range, Vec::new()),
                None => Reply::new(404),
            };
        }
        // /{org}/{name}/resolve/{revision}/{file}
        let segs: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
        if segs.len() != 5 || segs[2] != "resolve" {
            return Reply::new(404);
        }
        let (repo_id, revision, file) = (format!("{}/{}", segs[0], segs[1]), segs[3], segs[4]);
        let Some(repo) = self.repos.get(&repo_id) else {
            return Reply::new(404).header("X-Error-Code", "RepoNotFound");
        };
        if revision != "main" && revision != repo.commit {
            return Reply::new(404).header("X-Error-Code", "RevisionNotFound");
        }
        let Some(data) = repo.files.get(file) else {
            return Reply::new(404).header("X-Error-Code", "EntryNotFound");
        };
        let etag = etag_of(data);
        if file.ends_with(".safetensors") {
            // LFS: the hub answers with a redirect to the CDN and the LFS etag in
            // x-linked-etag; the size comes from the CDN's content-range.
            return Reply::new(302)
                .header("Location", &format!("{base}/cdn/{etag}"))
                .header("X-Linked-Etag", &format!("\"{etag}\""))
                .header("ETag", "\"git-pointer-etag\"")
                .header("X-Repo-Commit", &repo.commit);
        }
        ranged(
            data,
            range,
            vec![
                ("ETag".into(), format!("\"{etag}\"")),
                ("X-Repo-Commit".into(), repo.commit.clone()),
            ],
        )
    }
}

/// The server: serves until dropped, at most `MAX_CONNECTIONS` connections or
/// `LIFETIME`, one connection at a time, each with read/write timeouts.
struct Server {
    url: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

const MAX_CONNECTIONS: usize = 500;
const LIFETIME: Duration = Duration::from_secs(120);

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn handle(stream: TcpStream, base: &str, state: &Mutex<State>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut range = None;
    for _ in 0..100 {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    let reply = {
        let mut st = lock(state);
        st.log.push(Logged {
            path: path.clone(),
            range: range.clone(),
        });
        st.respond(&path, range.as_deref(), base)
    };
    let mut stream = stream;
    stream.write_all(&reply.to_bytes())?;
    stream.flush()?;
    stream.shutdown(Shutdown::Write)
}

impl Server {
    fn start(state: State) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(state));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop, base) = (state.clone(), stop.clone(), url.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + LIFETIME;
                let mut served = 0;
                while !stop.load(Ordering::Relaxed)
                    && Instant::now() < deadline
                    && served < MAX_CONNECTIONS
                {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            served += 1;
                            let _ = handle(stream, &base, &state);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(2))
                        }
                        Err(_) => break,
                    }
                }
            })
        };
        Self {
            url,
            state,
            stop,
            thread: Some(thread),
        }
    }

    fn log(&self) -> Vec<Logged> {
        lock(&self.state).log.clone()
    }

    fn paths(&self) -> Vec<String> {
        self.log().into_iter().map(|l| l.path).collect()
    }

    fn opts(&self, cache: &Path, offline: bool) -> HubOptions {
        HubOptions {
            endpoint: Some(self.url.clone()),
            cache_dir: cache.to_path_buf(),
            offline,
            revision: "main".into(),
            progress: false,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures.

fn read_dir(dir: &Path) -> Files {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// config.json + model.safetensors of a tiny random model.
fn single_file_repo(model: &Llama) -> Files {
    let dir = tempfile::tempdir().unwrap();
    load::save_pretrained(model, None, dir.path()).unwrap();
    let files = read_dir(dir.path());
    assert_eq!(files.len(), 2, "{:?}", files.keys());
    files
}

/// config.json + model.safetensors.index.json + two shards.
fn sharded_repo(model: &Llama) -> Files {
    let dir = tempfile::tempdir().unwrap();
    common::save_sharded(model, dir.path());
    read_dir(dir.path())
}

fn serve(repos: Vec<(&str, &str, Files)>) -> Server {
    let mut state = State::default();
    for (id, commit, files) in repos {
        state.repos.insert(
            id.into(),
            FakeRepo {
                commit: commit.into(),
                files,
            },
        );
    }
    Server::start(state)
}

fn ids() -> Tensor {
    Tensor::new(&[3u32, 1, 4, 1, 5, 9, 2, 6], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

/// Loads `dir` and checks its logits equal `model`'s bit for bit.
fn assert_same_model(dir: &Path, model: &Llama) {
    let (back, tok) = load::load_hf_dir(dir, DType::F32, &Device::Cpu).unwrap();
    assert!(tok.is_none());
    let x = ids();
    let (a, b) = (
        model.forward(&x, None).unwrap(),
        back.forward(&x, None).unwrap(),
    );
    assert_eq!(a.dims(), b.dims());
    assert_eq!(bits(&a), bits(&b), "logits differ after the download");
}

fn snapshot_dir(cache: &Path, repo: &str, commit: &str) -> PathBuf {
    cache
        .join(format!("models--{}", repo.replace('/', "--")))
        .join("snapshots")
        .join(commit)
}

fn resolve_path(repo: &str, file: &str) -> String {
    format!("/{repo}/resolve/main/{file}")
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn download_fills_the_hf_cache_and_loads_bit_identically() {
    let model = tiny(7);
    let files = single_file_repo(&model);
    let server = serve(vec![(REPO, COMMIT, files.clone())]);
    let cache = tempfile::tempdir().unwrap();
    let opts = server.opts(cache.path(), false);

    let dir = hub::download(REPO, &opts).unwrap();
    assert_eq!(dir, snapshot_dir(cache.path(), REPO, COMMIT));

    // The HF cache layout: refs/main -> commit, snapshot entries -> blobs named by etag.
    let repo_dir = cache.path().join("models--org--tiny-model");
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs").join("main")).unwrap(),
        COMMIT
    );
    for (name, data) in &files {
        let entry = dir.join(name);
        assert_eq!(&std::fs::read(&entry).unwrap(), data, "{name}");
        let blob = repo_dir.join("blobs").join(etag_of(data));
        assert_eq!(&std::fs::read(&blob).unwrap(), data, "blob of {name}");
        #[cfg(unix)]
        assert_eq!(
            std::fs::canonicalize(&entry).unwrap(),
            std::fs::canonicalize(&blob).unwrap(),
            "{name} should link to its blob"
        );
    }
    assert!(!dir.join("tokenizer.json").exists());
    assert!(!dir.join("model.safetensors.index.json").exists());

    assert_same_model(&dir, &model);

    // The requests: metadata (Range 0-0), bytes, the LFS redirect to the CDN; the optional
    // tokenizer files were asked for (404) and the index never was.
    let log = server.log();
    let paths = server.paths();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        let p = resolve_path(REPO, f);
        assert!(
            log.iter()
                .any(|l| l.path == p && l.range.as_deref() == Some("bytes=0-0")),
            "no metadata request for {f}: {log:?}"
        );
    }
    let weights_etag = etag_of(&files["model.safetensors"]);
    assert!(paths.contains(&format!("/cdn/{weights_etag}")), "{paths:?}");
    assert!(!paths.iter().any(|p| p.contains("index.json")), "{paths:?}");
}

#[test]
fn cached_repo_resolves_offline_without_requests() {
    let model = tiny(8);
    let server = serve(vec![(REPO, COMMIT, single_file_repo(&model))]);
    let cache = tempfile::tempdir().unwrap();
    let online = server.opts(cache.path(), false);
    let offline = server.opts(cache.path(), true);

    // Not cached yet: offline resolution fails, cached_snapshot sees nothing.
    assert!(hub::cached_snapshot(REPO, &online).is_none());
    assert!(hub::resolve_spec(REPO, &offline).is_err());
    assert!(server.log().is_empty(), "offline mode made requests");

    let first = hub::resolve_spec(REPO, &online).unwrap();
    assert_eq!(first.via, "hub");
    let dir = first.source.path().to_path_buf();
    let n = server.log().len();
    assert!(n > 0);

    assert_eq!(hub::cached_snapshot(REPO, &online), Some(dir.clone()));
    for opts in [&offline, &online] {
        let r = hub::resolve_spec(REPO, opts).unwrap();
        assert_eq!(r.source, ModelSource::HfDir(dir.clone()));
        assert_eq!(r.via, "hub cache");
    }
    assert_eq!(server.log().len(), n, "a cache hit went to the network");
    assert_same_model(&dir, &model);
}

#[test]
fn offline_and_not_cached_names_repo_cache_and_variable() {
    let server = serve(vec![(REPO, COMMIT, single_file_repo(&tiny(9)))]);
    let cache = tempfile::tempdir().unwrap();
    let opts = server.opts(cache.path(), true);
    for err in [
        hub::download(REPO, &opts).unwrap_err().to_string(),
        hub::resolve_spec(REPO, &opts).unwrap_err().to_string(),
    ] {
        assert!(err.contains(REPO), "{err}");
        assert!(err.contains(&cache.path().display().to_string()), "{err}");
        assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
    }
    assert!(server.log().is_empty());
}

#[test]
fn missing_repo_or_weights_is_an_error_naming_file_and_repo() {
    let model = tiny(10);
    let mut no_weights = single_file_repo(&model);
    no_weights.remove("model.safetensors");
    let server = serve(vec![("org/no-weights", COMMIT, no_weights)]);
    let cache = tempfile::tempdir().unwrap();
    let opts = server.opts(cache.path(), false);

    let err = hub::download("org/missing", &opts).unwrap_err().to_string();
    assert!(
        err.contains("config.json") && err.contains("org/missing"),
        "{err}"
    );
    let err = hub::resolve_spec("org/missing", &opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("config.json") && err.contains("org/missing"),
        "{err}"
    );

    // config.json is there but neither kind of weights is: both are named.
    let err = hub::download("org/no-weights", &opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains("org/no-weights"), "{err}");
    assert!(err.contains("model.safetensors.index.json"), "{err}");
    assert!(err.contains("`model.safetensors`"), "{err}");
    assert!(hub::cached_snapshot("org/no-weights", &opts).is_none());
}

#[test]
fn sharded_repo_downloads_every_shard_and_loads() {
    let model = tiny(11);
    let files = sharded_repo(&model);
    assert_eq!(files.len(), 4);
    let server = serve(vec![(REPO, COMMIT, files.clone())]);
    let cache = tempfile::tempdir().unwrap();
    let opts = server.opts(cache.path(), false);

    let dir = hub::download(REPO, &opts).unwrap();
    assert_eq!(dir, snapshot_dir(cache.path(), REPO, COMMIT));
    for (name, data) in &files {
        assert_eq!(&std::fs::read(dir.join(name)).unwrap(), data, "{name}");
    }
    assert!(!dir.join("model.safetensors").exists());
    let paths = server.paths();
    for f in [
        "model.safetensors",
        "model.safetensors.index.json",
        SHARD_1,
        SHARD_2,
    ] {
        assert!(paths.contains(&resolve_path(REPO, f)), "{f}: {paths:?}");
    }
    assert_same_model(&dir, &model);

    let n = server.log().len();
    assert_eq!(hub::cached_snapshot(REPO, &opts), Some(dir.clone()));
    let r = hub::resolve_spec(REPO, &server.opts(cache.path(), true)).unwrap();
    assert_eq!(r.source, ModelSource::HfDir(dir));
    assert_eq!(server.log().len(), n);
}

#[test]
fn renamed_repo_follows_the_relative_redirect() {
    // The hub answers a renamed repo with a relative 307 to the new name.
    let model = tiny(12);
    let server = serve(vec![(REPO, COMMIT, single_file_repo(&model))]);
    {
        let mut st = lock(&server.state);
        for f in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            st.overrides.insert(
                resolve_path("old/name", f),
                Reply::new(307).header("Location", &resolve_path(REPO, f)),
            );
        }
    }
    let cache = tempfile::tempdir().unwrap();
    let dir = hub::download("old/name", &server.opts(cache.path(), false)).unwrap();
    assert_eq!(dir, snapshot_dir(cache.path(), "old/name", COMMIT));
    assert_same_model(&dir, &model);
}

#[test]
fn interrupted_download_resumes_with_a_range() {
    let model = tiny(13);
    let files = single_file_repo(&model);
    let weights = files["model.safetensors"].clone();
    let server = serve(vec![(REPO, COMMIT, files)]);
    let cache = tempfile::tempdir().unwrap();
    // hf-hub keeps an interrupted download as blobs/<etag>.part and resumes it.
    let blobs = cache.path().join("models--org--tiny-model").join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let half = weights.len() / 2;
    std::fs::write(
        blobs.join(format!("{}.part", etag_of(&weights))),
        &weights[..half],
    )
    .unwrap();

    let dir = hub::download(REPO, &server.opts(cache.path(), false)).unwrap();
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        weights
    );
    let want = format!("bytes={half}-");
    assert!(
        server
            .log()
            .iter()
            .any(|l| l.range.as_deref() == Some(&want)),
        "{:?}",
        server.log()
    );
    assert_same_model(&dir, &model);
}

#[test]
fn repo_updated_after_a_partial_download_gives_one_complete_snapshot() {
    // First attempt: config.json arrives (commit A) but the weights are not there yet.
    let model = tiny(14);
    let files = single_file_repo(&model);
    let mut config_only = files.clone();
    config_only.remove("model.safetensors");
    let server = serve(vec![(REPO, COMMIT, config_only)]);
    let cache = tempfile::tempdir().unwrap();
    let opts = server.opts(cache.path(), false);
    assert!(hub::download(REPO, &opts).is_err());
    assert!(snapshot_dir(cache.path(), REPO, COMMIT)
        .join("config.json")
        .is_file());

    // Then the repo gets its weights in a new commit B: the result must be one snapshot
    // holding both files.
    lock(&server.state).repos.insert(
        REPO.into(),
        FakeRepo {
            commit: COMMIT_B.into(),
            files,
        },
    );
    let r = hub::resolve_spec(REPO, &opts).unwrap();
    let dir = r.source.path().to_path_buf();
    assert_eq!(dir, snapshot_dir(cache.path(), REPO, COMMIT_B));
    assert_same_model(&dir, &model);
    assert_eq!(hub::cached_snapshot(REPO, &opts), Some(dir));
}

#[test]
fn malformed_hub_answers_are_errors_not_panics() {
    let model = tiny(15);
    let server = serve(vec![(REPO, COMMIT, single_file_repo(&model))]);
    let etag = "\"abc\"";
    let cases: Vec<(&str, Reply)> = vec![
        // No etag.
        (
            "org/no-etag",
            Reply::new(206)
                .header("X-Repo-Commit", COMMIT)
                .header("Content-Range", "bytes 0-0/1"),
        ),
        // No commit.
        (
            "org/no-commit",
            Reply::new(206)
                .header("ETag", etag)
                .header("Content-Range", "bytes 0-0/1"),
        ),
        // No content-range.
        (
            "org/no-range",
            Reply::new(200)
                .header("ETag", etag)
                .header("X-Repo-Commit", COMMIT),
        ),
        // Garbage size.
        (
            "org/bad-size",
            Reply::new(206)
                .header("ETag", etag)
                .header("X-Repo-Commit", COMMIT)
                .header("Content-Range", "bytes 0-0/lots"),
        ),
        // A redirect without a Location.
        (
            "org/no-location",
            Reply::new(302)
                .header("ETag", etag)
                .header("X-Repo-Commit", COMMIT),
        ),
        // A server error.
        ("org/server-error", Reply::new(500)),
    ];
    {
        let mut st = lock(&server.state);
        for (repo, reply) in &cases {
            st.overrides
                .insert(resolve_path(repo, "config.json"), reply.clone());
        }
    }
    let cache = tempfile::tempdir().unwrap();
    let opts = server.opts(cache.path(), false);
    for (repo, _) in &cases {
        let res = std::panic::catch_unwind(|| hub::download(repo, &opts));
        let err = res
            .unwrap_or_else(|_| panic!("download of {repo} panicked"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("config.json") && err.contains(repo), "{err}");
    }
}
