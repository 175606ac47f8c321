//! The stand page's logs through the real API server (scripts/k8s-up.sh): draftd reads pods/log as
//! its own ServiceAccount; the API server asks the node's kubelet, which is kwok, serving the files a
//! kwok `Logs` object maps to the pod's containers. Also: the namespace carries the labels the
//! README's Fluent Bit and Vector examples select on.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::Utc;
use draftd::cluster::logs::{LogBounds, LogText};
use draftd::cluster::{Cluster, Kubernetes, StandMeta};
use draftd::config::Config;
use draftd::http::{AppState, router};
use draftd::stand::StandId;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;
use sqlx::PgPool;
use tower::ServiceExt;

use crate::support::*;

fn control_plane() -> Option<PathBuf> {
    if std::env::var("DRAFTD_SKIP_K8S").as_deref() == Ok("1") {
        eprintln!("skipped: DRAFTD_SKIP_K8S=1");
        return None;
    }
    let dir = std::env::var_os("DRAFTD_K8S_DIR").map(PathBuf::from).expect(
        "DRAFTD_K8S_DIR is not set: start a control plane with `scripts/k8s-up.sh start DIR` and set \
         DRAFTD_K8S_DIR=DIR (scripts/test.sh does both; DRAFTD_SKIP_K8S=1 skips)",
    );
    assert!(dir.join("draftd.kubeconfig").is_file(), "{}: no control plane there", dir.display());
    Some(dir)
}

async fn client_of(kubeconfig: &Path) -> kube::Client {
    let file = Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default()).await.unwrap();
    kube::Client::try_from(config).unwrap()
}

/// draftd as its ServiceAccount, binding its stand role in the namespaces it makes.
async fn draftd_cluster(dir: &Path) -> Kubernetes {
    let toml = format!(
        "[cluster]\nmode = \"kubernetes\"\nkubeconfig = \"{}/draftd.kubeconfig\"\nservice_account = \"draftd/draftd\"\n",
        dir.display()
    );
    let config = Config::from_toml(&toml).unwrap();
    let client = draftd::cluster::client::connect(&config.cluster).await.unwrap();
    Kubernetes::new(client, config.cluster.clone()).with_poll(Duration::from_millis(200))
}

/// A container's log file as the kubelet (and kwok) reads it: CRI format, one record a line.
fn cri_log(lines: impl Iterator<Item = String>) -> String {
    lines.enumerate().map(|(i, l)| format!("2026-01-01T00:00:{:02}.{i:09}Z stdout F {l}\n", i % 60)).collect()
}

/// Tells kwok which file holds each container's log (`kwok.x-k8s.io/v1alpha1` Logs, namespaced,
/// named like the pod).
async fn map_logs(admin: &kube::Client, namespace: &str, pod: &str, files: &[(&str, &Path)]) {
    let gvk = GroupVersionKind::gvk("kwok.x-k8s.io", "v1alpha1", "Logs");
    let api: Api<DynamicObject> =
        Api::namespaced_with(admin.clone(), namespace, &ApiResource::from_gvk_with_plural(&gvk, "logs"));
    let logs: Vec<_> =
        files.iter().map(|(c, f)| json!({"containers": [c], "logsFile": f.display().to_string()})).collect();
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Logs",
        "metadata": {"name": pod, "namespace": namespace},
        "spec": {"logs": logs},
    }))
    .unwrap();
    api.create(&PostParams::default(), &object).await.unwrap();
}

async fn page(app: &Router, path: &str, cookie: &str) -> (StatusCode, String) {
    let req = Request::get(path).header("cookie", cookie).body(Body::empty()).unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    (status, String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap())
}

async fn login(app: &Router) -> String {
    let req = Request::post("/login")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(format!("token={API_TOKEN}")))
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    res.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned()
}

/// A stand from the opened webhook, its namespace made by draftd's namespace step for real, and a
/// pod in it whose `app` container logged 150 short lines and `big` 100 lines of 1 KiB; `side`
/// has no log file. The stand's page, as a session sees it, shows the last lines asked for.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn the_stand_page_shows_the_last_lines_of_each_container_through_the_api_server(pool: PgPool) {
    let Some(dir) = control_plane() else { return };
    let admin = client_of(&dir.join("admin.kubeconfig")).await;
    let cluster = draftd_cluster(&dir).await;
    let config = config();
    let state = AppState::new(&config, projects(&config), pool.clone()).with_logs(Arc::new(cluster.clone()));
    state.set_migrated();
    let app = router(state);
    let branch = format!("feature/logs-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let res = github(
        &app,
        "pull_request",
        &uuid::Uuid::new_v4().to_string(),
        &github_pr("opened", &branch, &sha(1), "2019-05-15T15:20:33Z"),
    )
    .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    let id = res.body["stand"].as_i64().unwrap();
    let (namespace, project): (String, String) =
        sqlx::query_as("select namespace, project from stands where stand_id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    let meta = StandMeta {
        namespace: namespace.clone(),
        stand_id: StandId::new(id),
        project: project.clone(),
        expires_at: Utc::now() + chrono::Duration::hours(1),
        service_account_token: false,
    };
    cluster.ensure_namespace(&meta).await.unwrap();

    // The labels the README's log collector examples select on.
    let labels = Api::<Namespace>::all(admin.clone()).get(&namespace).await.unwrap().metadata.labels.unwrap();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "draftd");
    assert_eq!(
        (labels["draftd.io/stand"].as_str(), labels["draftd.io/project"].as_str()),
        (id.to_string().as_str(), project.as_str())
    );

    let files = tempfile::tempdir().unwrap();
    let app_log = files.path().join("app.log");
    std::fs::write(&app_log, cri_log((1..=150).map(|n| format!("request {n:03} <ok> & done")))).unwrap();
    let big_log = files.path().join("big.log");
    std::fs::write(&big_log, cri_log((1..=100).map(|n| format!("{n:03} {}", "x".repeat(1020))))).unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &namespace);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-0"},
        "spec": {"containers": [
            {"name": "app", "image": "registry.example.com/app:1"},
            {"name": "big", "image": "registry.example.com/app:1"},
            {"name": "side", "image": "registry.example.com/side:1"},
        ]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    map_logs(&admin, &namespace, "web-0", &[("app", &app_log), ("big", &big_log)]).await;

    // kwok marks the pod running and learns of the Logs object in its own time.
    let started = Instant::now();
    let read = loop {
        let read = cluster.pod_logs(&namespace, LogBounds::lines(20)).await.unwrap();
        let ready = read.iter().flat_map(|p| &p.containers).any(|c| matches!(c.log, LogText::Lines { .. }));
        if ready || started.elapsed() > Duration::from_secs(20) {
            break read;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(read.len(), 1, "{read:?}");
    let LogText::Lines { text, cut: false, previous: false } = &read[0].containers[0].log else { panic!("{read:?}") };
    let expected: String = (131..=150).map(|n| format!("request {n:03} <ok> & done\n")).collect();
    assert_eq!(text, &expected, "the last 20 lines, as the app wrote them");

    let cookie = login(&app).await;
    let (status, body) = page(&app, &format!("/stands/{id}/logs?lines=20"), &cookie).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("request 150 &lt;ok&gt; &amp; done") && body.contains("request 131 "), "{body}");
    assert!(!body.contains("request 130 "), "bounded to 20 lines: {body}");
    let (_, body) = page(&app, &format!("/stands/{id}/logs"), &cookie).await;
    assert!(body.contains("request 051 ") && !body.contains("request 050 "), "100 lines by default");
    // 100 lines of 1 KiB are more than the default 64 KiB: the page says the newest are missing.
    assert!(body.contains("Cut at 64 KiB: the newest of these lines are missing."), "{body}");
    assert!(body.contains("001 xxx") && !body.contains("100 xxx"), "the read starts at the oldest of the last 100");
    assert!(body.contains("<code>side</code>") && body.contains("The log could not be read: log target not found"));

    Api::<Namespace>::all(admin).delete(&namespace, &DeleteParams::background()).await.unwrap();
}
