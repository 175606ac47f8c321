//! Real nginx (Debian's package, with OpenResty's set-misc module as ingress-nginx builds it in)
//! in front of one app host, doing what ingress-nginx does for an Ingress annotated with
//!
//!   nginx.ingress.kubernetes.io/auth-url:    <auth_url>
//!   nginx.ingress.kubernetes.io/auth-signin: <signin_url>
//!
//! as its nginx.tmpl renders them (the `$authPath` location, the sign-in named location and the
//! `auth_request` lines of the app's location): every request first goes, without its body, to
//! `auth_url` with the client's own headers (Cookie, `X-Draftd-Access`, …) plus `X-Original-URL`,
//! `X-Original-Method`, `X-Auth-Request-Redirect`, `X-Sent-From: nginx-ingress-controller`,
//! `X-Real-IP`, `X-Forwarded-For` and `X-Request-ID`. A 2xx lets it through to the app (a
//! `Set-Cookie` of the auth answer is passed on); 401 becomes a 302 to `signin_url` with
//! `rd=$scheme://$http_host$escaped_request_uri` added (unless the URL has its own `rd`); 403 is
//! nginx's own 403 page (the auth answer's body is not shown); anything else is 500.
//!
//! The host is `server_name` (e.g. `shop-pr-7.stands.test`, resolved to 127.0.0.1 by the client:
//! reqwest's `.resolve(…)`, Chromium's `--host-resolver-rules="MAP *.stands.test 127.0.0.1"`);
//! other hosts get 404 from a default server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Where one gated host's requests go.
#[derive(Debug, Clone)]
pub struct Gate {
    /// The stand's host, as the Ingress rule names it.
    pub server_name: String,
    /// The `auth-url` annotation, e.g. `http://127.0.0.1:<draftd>/access/check`.
    pub auth_url: String,
    /// The `auth-signin` annotation, e.g. `http://draftd.stands.test:<draftd>/access/start`.
    pub signin_url: String,
    /// The app behind the Ingress, `host:port`.
    pub upstream: String,
    /// Serve https with a self-signed certificate for `*.<parent of server_name>` (browsers only
    /// keep `Secure` cookies from https; Chromium then needs `--ignore-certificate-errors`).
    pub tls: bool,
    /// Other hosts served straight to an upstream, ungated: (`server_name`, `host:port`), like
    /// draftd's own Ingress for its `/access/…` pages.
    pub passthrough: Vec<(String, String)>,
}

/// nginx running the gate, stopped (SIGTERM, then SIGKILL) on drop.
pub struct GatedNginx {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

/// Characters that would let a value escape its place in nginx.conf.
fn safe(value: &str) -> bool {
    !value.is_empty() && !value.chars().any(|c| c.is_whitespace() || matches!(c, ';' | '{' | '}' | '"' | '\'' | '\\'))
}

/// ingress-nginx's `buildAuthSignURL`: `rd` (the original URL) is added unless the URL has one.
pub fn signin_target(signin_url: &str) -> String {
    let rd = "rd=$pass_access_scheme://$http_host$escaped_request_uri";
    match signin_url.split_once('?') {
        None => format!("{signin_url}?{rd}"),
        Some((_, q)) if q.split('&').any(|kv| kv.split('=').next() == Some("rd")) => signin_url.to_owned(),
        Some(_) => format!("{signin_url}&{rd}"),
    }
}

/// A self-signed certificate and key for `*.<domain>` and `<domain>`, made with openssl.
fn self_signed(dir: &Path, domain: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj"])
        .arg(format!("/CN=*.{domain}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:*.{domain},DNS:{domain}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (Debian's openssl package; scripts/install-web.sh installs it)");
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    (cert, key)
}

fn config(dir: &Path, port: u16, gate: &Gate, root: bool) -> String {
    let (listen, certificate) = if gate.tls {
        let domain = gate.server_name.split_once('.').map_or(gate.server_name.as_str(), |(_, d)| d);
        let (cert, key) = self_signed(dir, domain);
        (
            format!("{port} ssl"),
            format!("ssl_certificate {};\n    ssl_certificate_key {};", cert.display(), key.display()),
        )
    } else {
        (port.to_string(), String::new())
    };
    let passthrough: String = gate
        .passthrough
        .iter()
        .map(|(name, upstream)| {
            format!(
                "    server {{\n        listen 127.0.0.1:{listen};\n        server_name {name};\n        location / {{\n            proxy_set_header Host $http_host;\n            proxy_set_header X-Forwarded-Proto $scheme;\n            proxy_pass http://{upstream};\n        }}\n    }}\n"
            )
        })
        .collect();
    let auth_host =
        url::Url::parse(&gate.auth_url).ok().and_then(|u| u.host_str().map(str::to_owned)).expect("auth_url");
    let user = if root { "user root;" } else { "" };
    let dir = dir.display();
    let (name, auth_url, upstream) = (&gate.server_name, &gate.auth_url, &gate.upstream);
    let signin = signin_target(&gate.signin_url);
    format!(
        r#"# Written by tests/support/nginx_auth.rs; see its header comment.
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_set_misc_module.so;
{user}
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;

events {{
    worker_connections 256;
}}

http {{
    client_body_temp_path {dir}/tmp/client_body;
    proxy_temp_path       {dir}/tmp/proxy;
    fastcgi_temp_path     {dir}/tmp/fastcgi;
    uwsgi_temp_path       {dir}/tmp/uwsgi;
    scgi_temp_path        {dir}/tmp/scgi;

    log_format gate '$remote_addr "$request" host=$http_host status=$status upstream_status=$upstream_status';
    access_log {dir}/access.log gate;
    default_type text/plain;
    server_tokens off;
    {certificate}

    map $http_x_request_id $req_id {{
        default $http_x_request_id;
        ""      $request_id;
    }}
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ""      close;
    }}

    upstream app {{
        server {upstream} max_fails=0;
    }}

    server {{
        listen 127.0.0.1:{listen} default_server;
        server_name _;
        return 404;
    }}

{passthrough}
    server {{
        listen 127.0.0.1:{listen};
        server_name {name};

        # nginx.tmpl: location = $authPath
        location = /_external-auth-Lw-Prefix {{
            internal;
            access_log off;

            proxy_pass_request_body     off;
            proxy_set_header            Content-Length          "";
            proxy_set_header            X-Forwarded-Proto       "";
            proxy_set_header            X-Request-ID            $req_id;

            proxy_set_header            Host                    {auth_host};
            proxy_set_header            X-Original-URL          $scheme://$http_host$request_uri;
            proxy_set_header            X-Original-Method       $request_method;
            proxy_set_header            X-Sent-From             "nginx-ingress-controller";
            proxy_set_header            X-Real-IP               $remote_addr;
            proxy_set_header            X-Forwarded-For         $remote_addr;
            proxy_set_header            X-Auth-Request-Redirect $request_uri;

            proxy_buffering             on;
            proxy_ssl_server_name       on;
            proxy_pass_request_headers  on;
            proxy_http_version          1.1;
            set $target {auth_url};
            proxy_pass $target;
        }}

        # nginx.tmpl: location buildAuthSignURLLocation
        location @signin {{
            internal;
            add_header Set-Cookie $auth_cookie;
            return 302 {signin};
        }}

        location / {{
            set $pass_access_scheme  $scheme;
            set $pass_server_port    $server_port;
            set $best_http_host      $http_host;
            set $pass_port           $pass_server_port;

            auth_request        /_external-auth-Lw-Prefix;
            auth_request_set    $auth_cookie $upstream_http_set_cookie;
            add_header          Set-Cookie $auth_cookie;

            set_escape_uri $escaped_request_uri $request_uri;
            error_page 401 = @signin;

            proxy_set_header Host                   $best_http_host;
            proxy_set_header Upgrade                $http_upgrade;
            proxy_set_header Connection             $connection_upgrade;
            proxy_set_header X-Request-ID           $req_id;
            proxy_set_header X-Real-IP              $remote_addr;
            proxy_set_header X-Forwarded-For        $remote_addr;
            proxy_set_header X-Forwarded-Host       $best_http_host;
            proxy_set_header X-Forwarded-Port       $pass_port;
            proxy_set_header X-Forwarded-Proto      $pass_access_scheme;
            proxy_set_header X-Forwarded-Scheme     $pass_access_scheme;
            proxy_set_header X-Scheme               $pass_access_scheme;
            proxy_set_header Proxy                  "";
            proxy_http_version 1.1;

            proxy_pass http://app;
        }}
    }}
}}
"#
    )
}

fn nginx_binary() -> PathBuf {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/install-web.sh");
    let out = Command::new(script).output().expect("scripts/install-web.sh");
    assert!(out.status.success(), "install-web.sh: {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().lines().next().expect("nginx path"))
}

impl GatedNginx {
    pub fn start(gate: &Gate) -> GatedNginx {
        let extra = gate.passthrough.iter().flat_map(|(n, u)| [n, u]);
        for v in [&gate.server_name, &gate.auth_url, &gate.signin_url, &gate.upstream].into_iter().chain(extra) {
            assert!(safe(v), "nginx_auth: {v:?} cannot go into nginx.conf");
        }
        let nginx = nginx_binary();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config(dir.path(), port, gate, root)).unwrap();
        let error_log = dir.path().join("error.log");
        let child = Command::new(&nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(&error_log)
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nginx");
        let mut gated = GatedNginx { port, dir, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = gated.child.try_wait().unwrap().is_some();
            assert!(!exited && Instant::now() < deadline, "nginx did not start: {}", gated.error_log());
            std::thread::sleep(Duration::from_millis(50));
        }
        gated
    }

    /// `http://<server_name>:<port><path>`: resolve the name to 127.0.0.1 in the client.
    pub fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.port)
    }

    /// As [`GatedNginx::url`], for a gate started with `tls`.
    pub fn https_url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.port)
    }

    /// The address to resolve a gated host to (reqwest: `.resolve(host, nginx.addr())`).
    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

impl Drop for GatedNginx {
    fn drop(&mut self) {
        // SIGTERM: nginx's fast shutdown, the master stops its workers too.
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
