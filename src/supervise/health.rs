//! One health probe per component, written as a URL in the rendered unit and the plan:
//! `http://host:port/path` must answer 200 (etcd `/health`, MinIO `/minio/health/live`,
//! Milvus `/healthz`, the load balancer's own status server), `tcp://host:port` must
//! accept. A probe tells three outcomes apart: healthy; answering but unhealthy (etcd
//! without quorum, Milvus waiting for a dependency: restarting would not help); and no
//! answer at all, which for a running unit means wedged.

use std::time::Duration;

/// How long one probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Http(String),
    Tcp(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// It answered, but not "healthy" (the reason).
    Unhealthy(String),
    /// It did not answer in time, or refused the connection (the reason).
    NoAnswer(String),
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a probe: use http://host:port/path or tcp://host:port")]
pub struct BadProbe(String);

impl std::str::FromStr for Probe {
    type Err = BadProbe;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let bad = || BadProbe(spec.to_owned());
        if spec.starts_with("http://") {
            let url: reqwest::Url = spec.parse().map_err(|_| bad())?;
            url.host_str().ok_or_else(bad)?;
            Ok(Probe::Http(spec.to_owned()))
        } else if let Some(address) = spec.strip_prefix("tcp://") {
            let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad());
            }
            Ok(Probe::Tcp(address.to_owned()))
        } else {
            Err(bad())
        }
    }
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Probe::Http(url) => f.write_str(url),
            Probe::Tcp(address) => write!(f, "tcp://{address}"),
        }
    }
}

/// A client for probes: short timeouts, no proxies from the environment.
pub fn client() -> anyhow::Result<reqwest::Client> {
    crate::host::plain_http_client(PROBE_TIMEOUT)
}

impl Probe {
    pub async fn check(&self, client: &reqwest::Client) -> Health {
        match self {
            Probe::Http(url) => match client.get(url).send().await {
                Ok(answer) if answer.status().is_success() => Health::Healthy,
                Ok(answer) => {
                    let status = answer.status();
                    let body = answer.text().await.unwrap_or_default();
                    Health::Unhealthy(format!("{status}: {}", body.trim()))
                }
                Err(e) => Health::NoAnswer(crate::logging::error_chain(&e)),
            },
            Probe::Tcp(address) => {
                match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(address))
                    .await
                {
                    Ok(Ok(_)) => Health::Healthy,
                    Ok(Err(e)) => Health::NoAnswer(e.to_string()),
                    Err(_) => Health::NoAnswer(format!("no connection in {PROBE_TIMEOUT:?}")),
                }
            }
        }
    }

    /// Probes until healthy or `timeout` passes (what a unit's ExecStartPost runs, so a
    /// unit is "active" only once its component answers, and units ordered after it
    /// start only then).
    /// Probes until healthy or `timeout`; gives up at once when `main_pid` (the service's
    /// main process, for a unit's ExecStartPost) is gone: systemd waits for
    /// ExecStartPost even after the main process died, so without this a component that
    /// cannot start would sit in "activating" for the whole timeout and never reach its
    /// start limit.
    pub async fn wait_healthy(
        &self,
        timeout: Duration,
        main_pid: Option<u32>,
    ) -> Result<(), String> {
        let client = client().map_err(|e| format!("{e:#}"))?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(pid) = main_pid {
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    return Err(format!(
                        "the service's main process (PID {pid}) exited before {self} answered"
                    ));
                }
            }
            let why = match self.check(&client).await {
                Health::Healthy => return Ok(()),
                Health::Unhealthy(why) => format!("{self} answers unhealthy: {why}"),
                Health::NoAnswer(why) => format!("{self} does not answer: {why}"),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(why);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_parse_and_print_back() {
        for spec in ["http://10.0.0.1:2379/health", "tcp://127.0.0.1:19537"] {
            let probe: Probe = spec.parse().unwrap();
            assert_eq!(probe.to_string(), spec);
        }
        for bad in [
            "ftp://x",
            "tcp://nohost",
            "tcp://:1",
            "tcp://h:99999",
            "http://",
        ] {
            assert!(bad.parse::<Probe>().is_err(), "{bad}");
        }
    }
}
