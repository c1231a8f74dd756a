//! The channel under the daemon's balanced etcd client: tonic's balanced channel, plus
//! one resend. A member that just died stays in the balance until
//! [`super::keep_endpoints_live`] notices (up to a second), and each request routed to
//! it fails with "connection refused". Nothing reached etcd then, so the request, even a
//! write, is sent again and lands on a member that answers. Client-streaming calls
//! (watch, lease keepalive) pass through unchanged: their body cannot be replayed.

use std::time::Duration;

use bytes::Bytes;
use etcd_client::{BalancedChannelBuilder, Channel};
use http_body_util::{BodyExt, Full};
use tonic::body::Body;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceExt};

/// How long a request keeps being resent while its endpoint refuses connections.
const RESEND_FOR: Duration = Duration::from_secs(2);

/// gRPC methods whose request is a stream.
const CLIENT_STREAMS: [&str; 2] = [
    "/etcdserverpb.Watch/Watch",
    "/etcdserverpb.Lease/LeaseKeepAlive",
];

/// Builds the balanced channel that resends refused requests.
pub struct ResendRefused;

impl BalancedChannelBuilder for ResendRefused {
    type Error = tonic::transport::Error;

    fn balanced_channel(
        self,
        buffer_size: usize,
    ) -> Result<
        (
            Channel,
            tokio::sync::mpsc::Sender<
                tonic::transport::channel::Change<http::Uri, tonic::transport::Endpoint>,
            >,
        ),
        Self::Error,
    > {
        let (balanced, endpoints) = tonic::transport::Channel::balance_channel(buffer_size);
        let service = tower::service_fn(move |request| send(balanced.clone(), request));
        Ok((
            Channel::Custom(BoxCloneSyncService::new(service)),
            endpoints,
        ))
    }
}

async fn send(
    channel: tonic::transport::Channel,
    request: http::Request<Body>,
) -> Result<http::Response<Body>, BoxError> {
    if CLIENT_STREAMS.contains(&request.uri().path()) {
        return Ok(channel.oneshot(request).await?);
    }
    let (parts, body) = request.into_parts();
    let body: Bytes = body.collect().await?.to_bytes();
    let deadline = tokio::time::Instant::now() + RESEND_FOR;
    let mut pause = Duration::from_millis(25);
    loop {
        let request = http::Request::from_parts(parts.clone(), Body::new(Full::new(body.clone())));
        match channel.clone().oneshot(request).await {
            Err(error) if refused(&error) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(400));
            }
            answer => return Ok(answer?),
        }
    }
}

/// Whether `error` says the endpoint refused the TCP connection: the request was never
/// sent. Timeouts and resets are not: a request may have reached etcd before them.
fn refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        cause = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_an_endpoint_refuses_is_resent_until_the_deadline() {
        // A port nothing listens on: refused at once.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let refusing = etcd_client::Client::connect_with_balanced_channel(
            [dead.as_str()],
            None,
            ResendRefused,
        )
        .await
        .unwrap();
        let started = std::time::Instant::now();
        let error = refusing.clone().get("k", None).await.unwrap_err();
        assert!(error.to_string().contains("tcp connect error"), "{error}");
        assert!(
            started.elapsed() >= RESEND_FOR,
            "the request was resent until the deadline"
        );
    }

    #[test]
    fn only_a_refused_connection_counts_as_never_sent() {
        let refused_error = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(refused(&refused_error));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(!refused(&reset));
    }
}
