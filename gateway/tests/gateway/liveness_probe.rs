//! `/livez` stays 200 while the gateway drains, when `/healthz` and `/readyz` already answer
//! 503: a liveness probe on it never kills a draining gateway, and readiness takes the
//! gateway out of rotation as soon as the drain starts.

use crate::common::*;
use flotilla_shared::close_codes::DRAINING;
use flotilla_testkit::within;
use std::net::SocketAddr;

async fn status(addr: SocketAddr, path: &str) -> u16 {
    within(path, reqwest::get(format!("http://{addr}{path}")))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .status()
        .as_u16()
}

#[tokio::test]
async fn livez_answers_200_while_serving_and_while_draining() {
    // One socket per batch and a long pause: the drain is still running after the first close.
    let t = setup(&[
        ("drain_batch", "1"),
        ("drain_pause_ms", "3000"),
        ("shutdown_grace_ms", "6000"),
    ])
    .await;
    let [(a, ta), (b, tb)] = t.nodes::<2>().await;
    let gw = gateway(t.settings.clone()).await;
    let (mut wa, _) = gw.connect(&t.redis, a, &ta).await;
    let (mut wb, _) = gw.connect(&t.redis, b, &tb).await;
    assert_eq!(status(gw.addr, "/livez").await, 200);
    assert_eq!(status(gw.addr, "/healthz").await, 200);

    gw.shutdown.cancel();
    let first = tokio::select! {
        code = close_code(&mut wa) => code,
        code = close_code(&mut wb) => code,
    };
    assert_eq!(first, Some(DRAINING), "the drain started");
    assert_eq!(status(gw.addr, "/healthz").await, 503);
    assert_eq!(status(gw.addr, "/readyz").await, 503);
    assert_eq!(status(gw.addr, "/livez").await, 200, "alive while draining");
    assert!(!gw.task.is_finished(), "the second batch is still waiting");
}
