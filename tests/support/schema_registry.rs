//! A Confluent-compatible schema registry for the tests: the two read endpoints sluice uses
//! (`GET /schemas/ids/{id}`, `GET /subjects/{subject}/versions/{version}`), answering as the
//! Confluent registry does (404 with its error body for an unknown id, `schemaType` left out
//! for Avro), with optional basic auth and a switch that makes it answer 503.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Registry {
    by_id: Mutex<HashMap<u32, Value>>,
    by_subject: Mutex<HashMap<(String, String), Value>>,
    down: AtomicBool,
    /// `Authorization` header every request must carry.
    authorization: Option<String>,
    /// Paths asked for, in order.
    requests: Mutex<Vec<String>>,
}

pub struct SchemaRegistry {
    url: String,
    registry: Arc<Registry>,
}

/// A schema as the registry answers it: `schemaType` only when not Avro, as Confluent does.
pub fn registered(schema_type: Option<&str>, schema: &str, references: Value) -> Value {
    let mut body = json!({ "schema": schema, "references": references });
    if let Some(kind) = schema_type {
        body["schemaType"] = json!(kind);
    }
    body
}

impl SchemaRegistry {
    /// A registry on a free port; with `basic`, every request must carry those credentials.
    pub async fn start(basic: Option<(&str, &str)>) -> Self {
        let registry = Arc::new(Registry {
            authorization: basic.map(|(user, password)| {
                format!("Basic {}", BASE64.encode(format!("{user}:{password}")))
            }),
            ..Registry::default()
        });
        let app = axum::Router::new()
            .route("/schemas/ids/{id}", axum::routing::get(by_id))
            .route("/schemas/types", axum::routing::get(types))
            .route(
                "/subjects/{subject}/versions/{version}",
                axum::routing::get(by_subject),
            )
            .with_state(registry.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        Self { url, registry }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Registers `body` (see [`registered`]) under `id`.
    pub fn add(&self, id: u32, body: Value) {
        self.registry.by_id.lock().unwrap().insert(id, body);
    }

    /// Registers `body` as `subject`'s `version` (what references name).
    pub fn add_subject(&self, subject: &str, version: i64, body: Value) {
        self.registry
            .by_subject
            .lock()
            .unwrap()
            .insert((subject.to_owned(), version.to_string()), body);
    }

    /// While down, every request is answered 503.
    pub fn set_down(&self, down: bool) {
        self.registry.down.store(down, Ordering::SeqCst);
    }

    /// The paths asked for so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.registry.requests.lock().unwrap().clone()
    }
}

fn refuse(registry: &Registry, headers: &HeaderMap, path: String) -> Option<Response> {
    registry.requests.lock().unwrap().push(path);
    if registry.down.load(Ordering::SeqCst) {
        let body = json!({"error_code": 50301, "message": "registry unavailable"});
        return Some(json_response(StatusCode::SERVICE_UNAVAILABLE, body));
    }
    let given = headers.get("authorization").and_then(|v| v.to_str().ok());
    match &registry.authorization {
        Some(wanted) if given != Some(wanted.as_str()) => {
            let body = json!({"error_code": 401, "message": "Unauthorized"});
            Some(json_response(StatusCode::UNAUTHORIZED, body))
        }
        _ => None,
    }
}

fn json_response(status: StatusCode, body: Value) -> Response {
    let content_type = [("content-type", "application/vnd.schemaregistry.v1+json")];
    (status, content_type, body.to_string()).into_response()
}

fn answer(found: Option<Value>, missing_code: u32) -> Response {
    match found {
        Some(body) => json_response(StatusCode::OK, body),
        None => {
            let body = json!({"error_code": missing_code, "message": "Schema not found"});
            json_response(StatusCode::NOT_FOUND, body)
        }
    }
}

async fn by_id(
    State(registry): State<Arc<Registry>>,
    Path(id): Path<u32>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refuse(&registry, &headers, format!("/schemas/ids/{id}")) {
        return refused;
    }
    let found = registry.by_id.lock().unwrap().get(&id).cloned();
    answer(found, 40403)
}

async fn types(State(registry): State<Arc<Registry>>, headers: HeaderMap) -> Response {
    if let Some(refused) = refuse(&registry, &headers, "/schemas/types".into()) {
        return refused;
    }
    json_response(StatusCode::OK, json!(["JSON", "PROTOBUF", "AVRO"]))
}

async fn by_subject(
    State(registry): State<Arc<Registry>>,
    Path((subject, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/subjects/{subject}/versions/{version}");
    if let Some(refused) = refuse(&registry, &headers, path) {
        return refused;
    }
    let found = registry
        .by_subject
        .lock()
        .unwrap()
        .get(&(subject, version))
        .cloned();
    answer(found, 40401)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_fake_registry_answers_as_confluent_does() {
        let registry = SchemaRegistry::start(Some(("u", "p"))).await;
        registry.add(5, registered(None, "\"string\"", json!([])));
        registry.add_subject("a b", 2, registered(Some("JSON"), "{}", json!([])));
        let client = reqwest::Client::new();
        let get = |path: &str, auth: bool| {
            let request = client.get(format!("{}{path}", registry.url()));
            let request = if auth {
                request.basic_auth("u", Some("p"))
            } else {
                request
            };
            async move {
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                (
                    status,
                    serde_json::from_slice::<Value>(&response.bytes().await.unwrap()).unwrap(),
                )
            }
        };
        let (status, body) = get("/schemas/ids/5", true).await;
        assert_eq!((status, body["schema"].as_str()), (200, Some("\"string\"")));
        assert!(body.get("schemaType").is_none(), "Avro has no schemaType");
        assert_eq!(get("/schemas/ids/5", false).await.0, 401);
        assert_eq!(get("/schemas/ids/6", true).await.1["error_code"], 40403);
        let (status, body) = get("/subjects/a%20b/versions/2", true).await;
        assert_eq!((status, body["schemaType"].as_str()), (200, Some("JSON")));
        registry.set_down(true);
        assert_eq!(get("/schemas/ids/5", true).await.0, 503);
        assert_eq!(registry.requests().len(), 5);
    }
}
