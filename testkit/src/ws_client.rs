//! A push-channel client over WebSocket, as an agent of the WebSocket generation connects:
//! `GET /api/agent/ws` with its node token as a bearer token.

use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// An open push socket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket to `url` with a bearer token; the handshake error (e.g. HTTP 401) on
/// failure.
pub async fn connect(url: &str, token: &str) -> Result<Ws, tungstenite::Error> {
    let mut request = url.into_client_request()?;
    let bearer = format!("Bearer {token}").parse();
    let bearer = bearer.expect("a token is a valid header value");
    request.headers_mut().insert("authorization", bearer);
    crate::within(
        "websocket handshake",
        tokio_tungstenite::connect_async(request),
    )
    .await
    .map(|(ws, _)| ws)
}

/// The HTTP status of a refused handshake.
pub fn refused_status(result: Result<Ws, tungstenite::Error>) -> u16 {
    match result {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, the upgrade succeeded"),
    }
}

/// The next text frame, skipping pings and pongs; panics on anything else.
pub async fn next_text(ws: &mut Ws) -> String {
    // One bound for the whole wait: keepalive pings must not restart it.
    let text = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return t.to_string(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    };
    crate::within("a text frame", text).await
}
