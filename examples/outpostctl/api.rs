//! The HTTPS client: one request to the Administration Server's API, its answer or a failure naming what went wrong.

use super::*;

/// One HTTPS connection per request to the API.
pub(crate) struct Api {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: tokio_rustls::TlsConnector,
    pub(crate) token: Option<String>,
    pub(crate) virtual_server: Option<String>,
}

/// A refusal or failure, printed as the API's problem detail.
pub(crate) struct Failure(pub(crate) String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

impl Api {
    pub(crate) fn new(cli: &Cli) -> Result<Self, Failure> {
        let rest = cli.server.strip_prefix("https://").ok_or_else(|| {
            Failure(format!(
                "--server {:?}: must start with https://",
                cli.server
            ))
        })?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                p.parse()
                    .map_err(|e| Failure(format!("--server port {p:?}: {e}")))?,
            ),
            _ => (authority.to_string(), 13299),
        };
        let ca = outpost::pki::store::read_ca_certificate(&cli.ca)
            .map_err(|e| Failure(format!("--ca {}: {e}", cli.ca.display())))?;
        let cfg = outpost::pki::tls::api_client_config(&ca, &Default::default())?;
        Ok(Api {
            host,
            port,
            tls: tokio_rustls::TlsConnector::from(cfg),
            token: cli.token.clone(),
            virtual_server: cli.virtual_server.clone(),
        })
    }

    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Value), Failure> {
        let addr = format!("{}:{}", self.host, self.port);
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| Failure(format!("cannot reach {addr}: {e}")))?;
        let name = rustls::pki_types::ServerName::try_from(self.host.clone())
            .map_err(|e| Failure(format!("server name {:?}: {e}", self.host)))?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| Failure(format!("TLS with {addr}: {e}")))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
            .header("content-type", content_type);
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(vs) = &self.virtual_server {
            req = req.header("outpost-virtual-server", vs);
        }
        let resp = send
            .send_request(req.body(Full::new(bytes::Bytes::from(body)))?)
            .await?;
        let status = resp.status().as_u16();
        let raw = resp.into_body().collect().await?.to_bytes();
        let value = if raw.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&raw)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&raw).into_owned()))
        };
        if status >= 400 {
            let detail = value["detail"].as_str().unwrap_or("").to_string();
            let field = value["field"]
                .as_str()
                .map(|f| format!(" (field {f})"))
                .unwrap_or_default();
            let title = value["title"].as_str().unwrap_or("refused");
            return Err(Failure(format!("{status} {title}: {detail}{field}")));
        }
        Ok((status, value))
    }

    pub(crate) async fn get(&self, path: &str) -> Result<Value, Failure> {
        Ok(self
            .call("GET", path, "application/json", Vec::new())
            .await?
            .1)
    }

    pub(crate) async fn send(
        &self,
        method: &str,
        path: &str,
        body: Value,
    ) -> Result<Value, Failure> {
        let bytes = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        Ok(self.call(method, path, "application/json", bytes).await?.1)
    }
}

/// `key=value&...` of the options that are set, percent-encoded.
pub(crate) fn query(pairs: &[(&str, Option<String>)]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let q: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", enc(v))))
        .collect();
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

pub(crate) fn seg(s: &str) -> String {
    query(&[("x", Some(s.to_string()))])[3..].to_string()
}

pub(crate) fn read_password(what: &str) -> Result<String, Failure> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Failure(format!("reading the {what} from standard input: {e}")))?;
    let p = line.trim_end_matches(['\r', '\n']).to_string();
    if p.is_empty() {
        return Err(Failure(format!("no {what} on standard input")));
    }
    Ok(p)
}
