//! HTTP/2 client connections with prior knowledge (h2c), as a load balancer that multiplexes its
//! clients opens them to the relay; for the connection tests and the streams bench (which takes
//! this file by path).

/// Sends requests on one HTTP/2 connection; clones share it.
pub type Http2Sender = hyper::client::conn::http2::SendRequest<axum::body::Body>;

/// Opens an HTTP/2 connection with prior knowledge to `addr`; its driving task runs until the
/// connection closes.
pub async fn connect(addr: impl tokio::net::ToSocketAddrs) -> Http2Sender {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    sender
}

/// A `POST` of the JSON `body` to `uri`.
pub fn post(uri: &str, body: String) -> hyper::Request<axum::body::Body> {
    hyper::Request::post(uri)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body))
        .unwrap()
}

/// Sends `request` on `sender`'s connection once it takes another stream: the answer, its body
/// still to come.
pub async fn send(
    sender: &mut Http2Sender,
    request: hyper::Request<axum::body::Body>,
) -> Result<hyper::Response<hyper::body::Incoming>, hyper::Error> {
    sender.ready().await?;
    sender.send_request(request).await
}
