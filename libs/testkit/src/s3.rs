//! A real S3-compatible server on a free loopback port: moto's `moto_server`
//! (PyPI, installed by `scripts/setup` into Tally's tool cache), with one
//! bucket created. Everything lives in its memory; killed when dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::{find_binary, free_port, wait_for_port};

/// A running S3 server with a bucket.
pub struct S3Server {
    child: Child,
    port: u16,
    bucket: String,
}

impl S3Server {
    /// Starts `moto_server` and creates `bucket`.
    pub fn start(bucket: &str) -> Self {
        let port = free_port();
        let child = Command::new(find_binary("moto_server", "TALLY_MOTO_BIN"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn moto_server (scripts/setup installs it)");
        let server = Self { child, port, bucket: bucket.to_owned() };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(wait_for_port(addr, Duration::from_secs(30)), "moto_server did not start on port {port}");
        let status = server.request(&format!("PUT /{bucket} HTTP/1.1"));
        assert!(status.starts_with("HTTP/1.1 200"), "creating bucket {bucket}: {status}");
        server
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `s3://<bucket>/<prefix>`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// The object-store options that reach this server.
    pub fn options(&self) -> Vec<(String, String)> {
        [
            ("aws_endpoint", self.endpoint()),
            ("aws_allow_http", "true".to_owned()),
            ("aws_region", "us-east-1".to_owned()),
            ("aws_access_key_id", "tally-test".to_owned()),
            ("aws_secret_access_key", "tally-test-secret".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Sends a bodiless request line; returns the status line.
    fn request(&self, line: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto_server");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
        let request =
            format!("{line}\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", self.port);
        stream.write_all(request.as_bytes()).expect("send request");
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.lines().next().unwrap_or_default().to_owned()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
