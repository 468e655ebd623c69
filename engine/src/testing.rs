//! Helpers for tests that need a real S3-compatible server (feature `test-support`): the moto
//! server started on a free loopback port, and bucket creation. `.ci/run` installs moto and sets
//! `QUIVER_REQUIRE_S3=1`, which turns a missing server into a failure; elsewhere tests skip.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running moto server, stopped when dropped.
pub struct S3Server {
    child: Child,
    pub port: u16,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl S3Server {
    /// Starts `moto_server` on a free port; `None` (after saying so) when it is not installed
    /// and `QUIVER_REQUIRE_S3` is not `1`. Panics when the server does not come up.
    pub fn start() -> Option<S3Server> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let child = match Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                if std::env::var("QUIVER_REQUIRE_S3").as_deref() == Ok("1") {
                    panic!("QUIVER_REQUIRE_S3=1 but moto_server cannot start: {e}");
                }
                eprintln!("skipped: no moto_server on PATH (pip install 'moto[server]')");
                return None;
            }
        };
        let server = S3Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(server)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket with a plain HTTP request (moto accepts unsigned requests).
    pub fn create_bucket(&self, bucket: &str) {
        let port = self.port;
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("moto answers");
        write!(
            s,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .expect("request sent");
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("response read");
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    }

    /// The `AWS_*` variables that point a process (a scheduler, an executor) at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", "testing".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }

    /// The `quiver.s3.*` settings of a client session for this server.
    pub fn config_pairs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("quiver.s3.endpoint", self.endpoint()),
            ("quiver.s3.region", "us-east-1".to_string()),
            ("quiver.s3.access_key_id", "testing".to_string()),
            ("quiver.s3.secret_access_key", "testing".to_string()),
        ]
    }
}
