//! The queue, the writer thread and rotation, against real files in a temporary directory.
//! Line formats have their exact-text tests in `format.rs`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, UNIX_EPOCH};

use super::*;

/// How long a line may take to reach its file before a test fails: far more than it ever
/// needs, so only a writer that does not flush (or is stuck) hits it.
const PATIENCE: Duration = Duration::from_secs(10);

/// A fresh directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("lb-access-log-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An entry whose path tells the lines apart.
fn entry(path: &str) -> Entry {
    Entry {
        time: UNIX_EPOCH + Duration::from_secs(971_186_136),
        client: SocketAddr::from(([192, 0, 2, 1], 40_000)),
        kind: Kind::Http(Http {
            method: "GET".into(),
            authority: Some("example.com".into()),
            path: path.into(),
            version: HttpVersion::Http11,
            referer: None,
            user_agent: None,
        }),
        status: 200,
        bytes_in: 0,
        bytes_out: 5,
        worker: Some("10.0.0.1:8000".into()),
        pool: "default".into(),
        total: Duration::from_millis(3),
        connect: None,
        ttfb: Some(Duration::from_millis(2)),
        retries: 0,
        ended: Ended::Complete,
    }
}

/// The request paths of a combined-format file's lines, in order.
fn paths_in(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .map(|line| line.split(' ').nth(6).unwrap_or("?").to_string())
        .collect()
}

/// Polls `file` until its lines' paths are `expected`; fails, saying what is there, after
/// [`PATIENCE`].
fn wait_for(file: &Path, expected: &[&str]) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let found = paths_in(file);
        if found == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} should hold the lines of {expected:?} within {PATIENCE:?}, holds {found:?}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn combined_file(path: &Path) -> (AccessLog, std::thread::JoinHandle<()>) {
    let target = AccessLogTarget::File(path.to_path_buf());
    start(
        "127.0.0.1:8080",
        &target,
        AccessLogFormat::Combined,
        Arc::default(),
        CAPACITY,
    )
    .unwrap()
    .unwrap()
}

#[test]
fn a_line_is_flushed_promptly_and_exactly() {
    let dir = TempDir::new("prompt");
    let file = dir.join("access.log");
    let target = AccessLogTarget::File(file.clone());
    let log = AccessLog::open(
        "127.0.0.1:8080",
        &target,
        AccessLogFormat::Json,
        Arc::default(),
    )
    .unwrap()
    .unwrap();
    log.log(entry("/one"));
    // No more traffic and the handle still alive: the line must not wait in a buffer.
    let deadline = Instant::now() + PATIENCE;
    let expected = concat!(
        r#"{"time":"2000-10-10T13:55:36.000Z","client":"192.0.2.1:40000","method":"GET","#,
        r#""authority":"example.com","path":"/one","protocol":"HTTP/1.1","status":200,"#,
        r#""bytes_in":0,"bytes_out":5,"worker":"10.0.0.1:8000","pool":"default","total_ms":3.000,"#,
        r#""connect_ms":null,"ttfb_ms":2.000,"retries":0,"ended":"complete","#,
        r#""listener":"127.0.0.1:8080","referer":null,"user_agent":null}"#,
        "\n"
    );
    loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if text == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the line should be in the file within {PATIENCE:?}; the file holds {text:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(log.dropped(), 0);
}

#[test]
fn a_full_queue_drops_and_counts_without_waiting() {
    let dir = TempDir::new("full");
    let file = dir.join("access.log");
    let dropped = Arc::new(AtomicU64::new(7));
    // No writer reads the queue yet: it fills after 4 entries.
    let (log, queue) = AccessLog::unstarted(dropped.clone(), 4);
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for i in 0..10 {
            log.log(entry(&format!("/{i}")));
        }
        done.send(log.dropped()).unwrap();
    });
    let seen = finished
        .recv_timeout(PATIENCE)
        .expect("log() must return at once when the queue is full, not wait for room");
    assert_eq!(
        seen,
        7 + 6,
        "6 of 10 entries found no room; the counter started at 7"
    );
    assert_eq!(
        dropped.load(Ordering::Relaxed),
        13,
        "the caller's counter is the one counted"
    );

    // The logging thread dropped the last handle: the writer writes what was queued, then
    // ends.
    let destination = Destination::File(file.clone());
    let shared = Arc::new(Shared {
        dropped,
        reopen: AtomicBool::new(false),
    });
    let writer = Writer::open("l", AccessLogFormat::Combined, destination, shared).unwrap();
    writer.spawn(queue).unwrap().join().unwrap();
    assert_eq!(paths_in(&file), ["/0", "/1", "/2", "/3"]);
}

#[test]
fn the_writer_ends_after_the_last_handle_and_writes_everything() {
    let dir = TempDir::new("end");
    let file = dir.join("access.log");
    let (log, thread) = combined_file(&file);
    let clone = log.clone();
    for i in 0..1000 {
        log.log(entry(&format!("/{i}")));
    }
    drop(log);
    clone.log(entry("/last"));
    drop(clone);
    thread.join().unwrap();
    let paths = paths_in(&file);
    assert_eq!(paths.len(), 1001);
    assert_eq!(paths[999], "/999");
    assert_eq!(paths[1000], "/last");
}

#[test]
fn reopen_follows_a_rotation() {
    let dir = TempDir::new("rotate");
    let file = dir.join("access.log");
    let rotated = dir.join("access.log.1");
    let (log, thread) = combined_file(&file);
    log.log(entry("/before"));
    wait_for(&file, &["/before"]);

    // What logrotate does: rename, then signal.
    std::fs::rename(&file, &rotated).unwrap();
    log.log(entry("/between"));
    log.reopen();
    log.log(entry("/after"));
    wait_for(&file, &["/after"]);
    drop(log);
    thread.join().unwrap();
    assert_eq!(
        paths_in(&rotated),
        ["/before", "/between"],
        "lines logged before reopen() stay in the renamed file"
    );
    assert_eq!(paths_in(&file), ["/after"]);
}

#[test]
fn reopen_that_fails_keeps_writing_to_the_old_file() {
    let dir = TempDir::new("reopen-fails");
    let sub = dir.join("logs");
    std::fs::create_dir(&sub).unwrap();
    let file = sub.join("access.log");
    let (log, thread) = combined_file(&file);
    // The directory moves away: the path cannot be reopened, but the open file still works.
    let moved = dir.join("moved");
    std::fs::rename(&sub, &moved).unwrap();
    log.reopen();
    log.log(entry("/still"));
    drop(log);
    thread.join().unwrap();
    assert_eq!(paths_in(&moved.join("access.log")), ["/still"]);
}

#[test]
fn off_opens_nothing_and_a_bad_path_is_an_error() {
    let off = AccessLog::open(
        "l",
        &AccessLogTarget::Off,
        AccessLogFormat::Json,
        Arc::default(),
    );
    assert!(off.unwrap().is_none());

    let target = AccessLogTarget::File("/nonexistent-lb-dir/access.log".into());
    let Err(e) = AccessLog::open("l", &target, AccessLogFormat::Json, Arc::default()) else {
        panic!("a file in a missing directory cannot be opened");
    };
    assert!(matches!(e, AccessLogError::Open { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "cannot open access log /nonexistent-lb-dir/access.log: No such file or directory (os error 2)"
    );
}
