//! `/healthz`: liveness. Answers as long as the process serves HTTP; it does not touch the
//! database, so a slow database does not get healthy API replicas restarted.

use poem::{handler, web::Json};
use serde_json::{Value, json};

#[handler]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}
