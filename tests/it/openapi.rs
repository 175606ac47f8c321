//! The OpenAPI document (`GET /api/v1/openapi.json`) against the router it describes: the same
//! routes, references that resolve, and real answers that fit the documented schemas.
//!
//! Each test writes the document to `$CARGO_TARGET_DIR/artifacts/openapi.json` for inspection.

use std::collections::BTreeSet;
use std::path::PathBuf;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::*;

/// Every route the document must describe, kept by hand: a route added to the router without a
/// description (or described but not routed) fails `the_document_describes_exactly_the_routes`.
/// The dashboard (HTML) and `/metrics` (Prometheus text) are deliberately not described.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/stands"),
    ("GET", "/api/v1/stands/{id}"),
    ("DELETE", "/api/v1/stands/{id}"),
    ("POST", "/api/v1/stands/{id}/runs"),
    ("POST", "/api/v1/stands/{id}/extend"),
    ("POST", "/api/v1/stands/{id}/wake"),
    ("GET", "/api/v1/metrics/summary"),
    ("GET", "/api/v1/openapi.json"),
    ("POST", "/webhooks/github"),
    ("POST", "/webhooks/gitlab"),
    ("GET", "/health"),
    ("GET", "/health/ready"),
    ("GET", "/health/startup"),
];

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Fetches the document without a token (it is public) and keeps a copy for inspection.
async fn document(app: &Router) -> Value {
    let res = send(app, Request::get("/api/v1/openapi.json").body(Body::empty()).unwrap()).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("openapi.json"), serde_json::to_string_pretty(&res.body).unwrap()).unwrap();
    res.body
}

/// (METHOD, path) of every operation in the document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| METHODS.contains(&k.to_uppercase().as_str()))
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect()
}

fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
    &doc["paths"][path][method.to_lowercase()]
}

/// A stand created by a real delivery (so it has a run and the delivery that queued it), whose run
/// then succeeded with its steps recorded: every GET has something to show.
async fn seed(app: &Router, pool: &PgPool) -> i64 {
    let res = github(
        app,
        "pull_request",
        &uuid::Uuid::new_v4().to_string(),
        &github_pr("opened", "feature/docs", &sha(1), "2019-05-15T15:20:33Z"),
    )
    .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    let stand = res.body["stand"].as_i64().unwrap();
    let run = res.body["run"].as_i64().unwrap();
    // In the past: the summary's window ends at the current whole second.
    sqlx::query(
        "with delivered as (update deliveries set received_at = now() - interval '10 minutes' where run_id = $1)
         update runs set state = 'succeeded', started_at = now() - interval '5 minutes',
                         finished_at = now() - interval '1 minute'
         where run_id = $1",
    )
    .bind(run)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into steps (run_id, name, state, attempt, started_at, finished_at, detail, error)
         values ($1, 'image', 'succeeded', 1, now(), now(), '{\"tag\": \"draft-x\"}', null),
                ($1, 'verify', 'failed', 1, now(), now(), '{}', '{\"message\": \"not ready\"}')",
    )
    .bind(run)
    .execute(pool)
    .await
    .unwrap();
    stand
}

fn request(method: &str, path: &str, token: Option<&str>) -> Request<Body> {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    req.body(Body::empty()).unwrap()
}

/// The router's fallbacks answer `not_found` (no route) and 405 (no such method); the handlers' own
/// 404s name what is missing (`stand_not_found`).
fn routed(res: &Response) -> bool {
    res.status != StatusCode::METHOD_NOT_ALLOWED
        && !(res.status == StatusCode::NOT_FOUND && res.body["error"]["code"] == json!("not_found"))
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn the_document_describes_exactly_the_routes(pool: PgPool) {
    let app = app(pool.clone());
    let doc = document(&app).await;
    assert_eq!(doc["info"]["version"], json!(env!("CARGO_PKG_VERSION")));
    let documented = operations(&doc);
    let kept: BTreeSet<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(documented, kept, "documented operations vs the routes kept in this test");

    let id = seed(&app, &pool).await;
    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    for path in paths {
        let concrete = path.replace("{id}", &id.to_string());
        for method in METHODS {
            let res = send(&app, request(method, &concrete, Some(API_TOKEN))).await;
            if documented.contains(&(method.to_string(), path.clone())) {
                assert!(routed(&res), "{method} {path} is documented but not routed: {} {}", res.status, res.body);
                // These requests carry no body: an operation that accepts that must not require one.
                let body = &operation(&doc, method, path)["requestBody"];
                if res.status.is_success() && body.is_object() {
                    assert_ne!(body["required"], json!(true), "{method} {path} works without a body");
                }
            } else {
                // The path is routed for other methods; this one must not be routed undocumented.
                assert_eq!(res.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path} answers but is not documented");
            }
        }
    }
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn documented_security_is_what_the_routes_ask(pool: PgPool) {
    let app = app(pool.clone());
    let doc = document(&app).await;
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!((&scheme["type"], &scheme["scheme"]), (&json!("http"), &json!("bearer")));
    let id = seed(&app, &pool).await;
    for (method, path) in operations(&doc) {
        let op = operation(&doc, &method, &path);
        let bearer = op["security"].as_array().is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
        // Everything under /api/v1 takes the token except the document itself.
        let expected = path.starts_with("/api/v1/") && path != "/api/v1/openapi.json";
        assert_eq!(bearer, expected, "{method} {path}: security {}", op["security"]);
        if bearer {
            let concrete = path.replace("{id}", &id.to_string());
            let res = send(&app, request(&method, &concrete, None)).await;
            assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{method} {path} without the token");
            assert!(op["responses"]["401"].is_object(), "{method} {path} documents its 401");
        }
    }
}

/// Every `$ref` anywhere in `value`.
fn refs<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => found.push(r),
                    _ => refs(v, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
        _ => {}
    }
}

/// The target of a local reference such as `#/components/schemas/Summary`.
fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    doc.pointer(pointer)
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn every_reference_resolves_and_every_answer_has_a_schema(pool: PgPool) {
    let app = app(pool);
    let doc = document(&app).await;
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(found.len() > 10, "the document uses references: {found:?}");
    for r in found {
        assert!(resolve(&doc, r).is_some_and(Value::is_object), "{r} does not resolve");
    }
    for (method, path) in operations(&doc) {
        let responses = operation(&doc, &method, &path)["responses"].as_object().unwrap();
        assert!(!responses.is_empty(), "{method} {path} documents no answer");
        for (status, response) in responses {
            let schema = &response["content"]["application/json"]["schema"];
            assert!(schema.is_object(), "{method} {path} {status}: no JSON schema in {response}");
            if status.starts_with('4') || status.starts_with('5') {
                // Health probes answer 503 with their own body; everything else with the error body.
                let error_body = schema["$ref"] == json!("#/components/schemas/ErrorBody");
                assert!(error_body || path.starts_with("/health"), "{method} {path} {status}: {schema}");
            }
        }
    }
}

/// Checks `value` against `schema`, the subset of JSON Schema utoipa emits: `$ref`, `allOf`,
/// `oneOf`/`anyOf`, `type` (one or a list), `enum`, `required`, `properties`, `items`. Properties
/// the value has but the schema does not name are reported too: the document must say what the
/// answers really carry.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    if let Some(r) = schema["$ref"].as_str() {
        match resolve(doc, r) {
            Some(target) => check(doc, target, value, at, errors),
            None => errors.push(format!("{at}: {r} does not resolve")),
        }
        return;
    }
    for part in schema["allOf"].as_array().into_iter().flatten() {
        check_shallow(doc, part, value, at, errors);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema[key].as_array() {
            let fits = options.iter().any(|option| {
                let mut e = Vec::new();
                check(doc, option, value, at, &mut e);
                e.is_empty()
            });
            if !fits {
                errors.push(format!("{at}: {value} fits none of {key} {}", Value::Array(options.clone())));
            }
        }
    }
    check_shallow(doc, schema, value, at, errors);
    if let (Some(map), Some(known)) = (value.as_object(), property_names(doc, schema)) {
        for key in map.keys().filter(|k| !known.contains(*k)) {
            errors.push(format!("{at}.{key}: not in the schema"));
        }
    }
}

/// Everything but the unknown-property check, which needs every `allOf` part at once.
fn check_shallow(doc: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    if let Some(r) = schema["$ref"].as_str() {
        match resolve(doc, r) {
            Some(target) => check_shallow(doc, target, value, at, errors),
            None => errors.push(format!("{at}: {r} does not resolve")),
        }
        return;
    }
    for part in schema["allOf"].as_array().into_iter().flatten() {
        check_shallow(doc, part, value, at, errors);
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !types.is_empty() {
        let fits = types.iter().any(|t| match *t {
            "null" => value.is_null(),
            "boolean" => value.is_boolean(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "string" => value.is_string(),
            "array" => value.is_array(),
            "object" => value.is_object(),
            _ => false,
        });
        if !fits {
            errors.push(format!("{at}: {value} is not {types:?}"));
            return;
        }
    }
    if let Some(allowed) = schema["enum"].as_array().filter(|a| !a.contains(value)) {
        errors.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let Some(map) = value.as_object() {
        for name in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if !map.contains_key(name) {
                errors.push(format!("{at}: required property {name} is missing"));
            }
        }
        for (name, sub) in schema["properties"].as_object().into_iter().flatten() {
            if let Some(v) = map.get(name) {
                check(doc, sub, v, &format!("{at}.{name}"), errors);
            }
        }
    }
    if let (Some(items), Some(values)) = (schema.get("items"), value.as_array()) {
        for (i, v) in values.iter().enumerate() {
            check(doc, items, v, &format!("{at}[{i}]"), errors);
        }
    }
}

/// The properties an object schema names, across its `allOf` parts; `None` when it names none
/// (a free-form object).
fn property_names(doc: &Value, schema: &Value) -> Option<BTreeSet<String>> {
    if let Some(r) = schema["$ref"].as_str() {
        return property_names(doc, resolve(doc, r)?);
    }
    let mut names: BTreeSet<String> =
        schema["properties"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
    for part in schema["allOf"].as_array().into_iter().flatten() {
        names.extend(property_names(doc, part)?);
    }
    (!names.is_empty()).then_some(names)
}

/// Checks a real answer against the schema the document gives for its status.
fn fits(doc: &Value, method: &str, path: &str, res: &Response) {
    let documented = &operation(doc, method, path)["responses"][res.status.as_str()];
    assert!(documented.is_object(), "{method} {path} answered {} which is not documented: {}", res.status, res.body);
    let schema = &documented["content"]["application/json"]["schema"];
    let mut errors = Vec::new();
    check(doc, schema, &res.body, "$", &mut errors);
    assert!(errors.is_empty(), "{method} {path} {}: {errors:#?}\nbody: {:#}", res.status, res.body);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn real_answers_fit_their_documented_schemas(pool: PgPool) {
    let app = app(pool.clone());
    let doc = document(&app).await;
    let id = seed(&app, &pool).await;

    // Every GET, with data behind it: the stand has a finished run with steps, and the run was
    // queued by a delivery, so the summary's lead time is an object rather than null.
    for (method, path) in operations(&doc).into_iter().filter(|(m, _)| m == "GET") {
        let res = send(&app, request(&method, &path.replace("{id}", &id.to_string()), Some(API_TOKEN))).await;
        assert!(res.status.is_success(), "{method} {path}: {} {}", res.status, res.body);
        fits(&doc, &method, &path, &res);
    }
    let summary = send(&app, request("GET", "/api/v1/metrics/summary", Some(API_TOKEN))).await;
    assert!(summary.body["projects"][0]["lead_time_seconds"].is_object(), "{}", summary.body);
    let stand = send(&app, request("GET", &format!("/api/v1/stands/{id}"), Some(API_TOKEN))).await;
    assert_eq!(stand.body["runs"][0]["steps"].as_array().map(Vec::len), Some(2), "{}", stand.body);

    // The other answers each route documents, as the router really gives them: (method, documented
    // path, request target with `{id}` for the stand, with the token?, body).
    let show = "/api/v1/stands/{id}";
    let extend = "/api/v1/stands/{id}/extend";
    let cases = [
        ("GET", "/api/v1/stands", "/api/v1/stands", false, None),
        ("GET", "/api/v1/stands", "/api/v1/stands?state=gone", true, None),
        ("GET", show, "/api/v1/stands/999999", true, None),
        ("GET", show, "/api/v1/stands/abc", true, None),
        ("GET", "/api/v1/metrics/summary", "/api/v1/metrics/summary?window=1y", true, None),
        ("POST", "/api/v1/stands/{id}/runs", "/api/v1/stands/{id}/runs", true, None),
        ("POST", extend, extend, true, Some(json!({ "by": "24h" }))),
        ("POST", extend, extend, true, Some(json!({ "by": "later" }))),
        ("POST", extend, extend, true, Some(json!({ "until": "24h" }))),
        ("DELETE", show, show, true, None),
        ("DELETE", show, show, true, None),
        ("POST", "/webhooks/github", "/webhooks/github", false, None),
    ];
    let mut statuses = BTreeSet::new();
    for (method, path, target, token, body) in cases {
        let mut req = Request::builder().method(method).uri(target.replace("{id}", &id.to_string()));
        if token {
            req = req.header("authorization", format!("Bearer {API_TOKEN}"));
        }
        let req = match body {
            Some(b) => req.header("content-type", "application/json").body(Body::from(b.to_string())).unwrap(),
            None => req.body(Body::empty()).unwrap(),
        };
        let res = send(&app, req).await;
        fits(&doc, method, path, &res);
        statuses.insert(res.status.as_u16());
    }
    // A webhook with its headers whose body is declared as neither JSON nor a form, and no secret verifies.
    let res = github_raw(&app, "pull_request", "delivery-415", b"{}".to_vec(), None, "text/plain").await;
    fits(&doc, "POST", "/webhooks/github", &res);
    statuses.insert(res.status.as_u16());
    // 202, 400 (state, id, window, by, an unknown body field, a webhook without its headers), 401, 404,
    // 409 (deleted twice), 415 (a webhook declared as text).
    assert_eq!(statuses, BTreeSet::from([202, 400, 401, 404, 409, 415]));
}
