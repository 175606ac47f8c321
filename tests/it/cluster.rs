//! The cluster layer against a mocked API server (`tower_test::mock::pair`, as kube-rs's
//! controller-rs does): each scenario plays the API server's side and asserts every request's
//! method, path, query and body.

use std::collections::HashMap;

use chrono::{SubsecRound, TimeZone, Utc};
use draftd::cluster::{Cluster, ClusterError, Kubernetes, StandMeta};
use draftd::config::ClusterConfig;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn mock(config: ClusterConfig) -> (Kubernetes, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Kubernetes::new(kube::Client::new(service, "default"), config), handle)
}

fn stand() -> StandMeta {
    StandMeta {
        namespace: "draft-login-form".into(),
        stand_id: StandId::new(7),
        project: "shop".into(),
        expires_at: Utc.with_ymd_and_hms(2026, 11, 27, 10, 0, 0).unwrap(),
        service_account_token: false,
    }
}

/// One request as the API server received it.
struct Seen {
    method: Method,
    path: String,
    query: HashMap<String, String>,
    content_type: Option<String>,
    body: Value,
}

/// Takes the next request and answers it with `status` and `answer`.
async fn serve(handle: &mut Handle, status: StatusCode, answer: impl FnOnce(&Seen) -> Value) -> Seen {
    let (request, send) = handle.next_request().await.expect("the client sent a request");
    let (parts, body) = request.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    let seen = Seen {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()).into_owned().collect(),
        content_type: parts.headers.get("content-type").map(|v| v.to_str().unwrap().to_owned()),
        body,
    };
    let reply = answer(&seen);
    send.send_response(
        Response::builder().status(status).body(Body::from(serde_json::to_vec(&reply).unwrap())).unwrap(),
    );
    seen
}

fn not_found(kind: &str, name: &str) -> Value {
    json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
            "message": format!("{kind} \"{name}\" not found") })
}

/// Asserts a server-side apply by draftd of `kind` at `path`, and answers with the applied object.
async fn expect_apply(handle: &mut Handle, path: &str, kind: &str) -> Value {
    let seen = serve(handle, StatusCode::OK, |s| s.body.clone()).await;
    assert_eq!(seen.method, Method::PATCH, "{path}");
    assert_eq!(seen.path, path);
    assert_eq!(seen.query.get("fieldManager").map(String::as_str), Some("draftd"), "{path}: {:?}", seen.query);
    assert_eq!(seen.query.get("force").map(String::as_str), Some("true"), "{path}: {:?}", seen.query);
    assert_eq!(seen.content_type.as_deref(), Some("application/apply-patch+yaml"), "{path}");
    assert_eq!(seen.body["kind"], kind, "{path}");
    let labels = &seen.body["metadata"]["labels"];
    assert_eq!(labels["app.kubernetes.io/managed-by"], "draftd", "{path}");
    assert_eq!(labels["draftd.io/stand"], "7", "{path}");
    assert_eq!(labels["draftd.io/project"], "shop", "{path}");
    seen.body
}

/// Everything inside the namespace, in the order the step applies it.
async fn expect_namespace_contents(handle: &mut Handle) -> HashMap<&'static str, Value> {
    let ns = "/api/v1/namespaces/draft-login-form";
    let mut objects = HashMap::new();
    objects.insert("quota", expect_apply(handle, &format!("{ns}/resourcequotas/draftd-quota"), "ResourceQuota").await);
    objects.insert("limits", expect_apply(handle, &format!("{ns}/limitranges/draftd-limits"), "LimitRange").await);
    let netpols = "/apis/networking.k8s.io/v1/namespaces/draft-login-form/networkpolicies";
    objects.insert("deny", expect_apply(handle, &format!("{netpols}/draftd-default-deny"), "NetworkPolicy").await);
    objects.insert("allow", expect_apply(handle, &format!("{netpols}/draftd-allow"), "NetworkPolicy").await);
    objects.insert("sa", expect_apply(handle, &format!("{ns}/serviceaccounts/default"), "ServiceAccount").await);
    objects
}

/// Runs `f` on a clone of the client in its own task, so the test can play the API server meanwhile.
fn call<T, F>(cluster: &Kubernetes, f: impl FnOnce(Kubernetes) -> F) -> tokio::task::JoinHandle<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = T> + Send + 'static,
{
    tokio::spawn(f(cluster.clone()))
}

/// Drops the client and asserts it sent nothing more.
async fn expect_no_more(cluster: Kubernetes, mut handle: Handle) {
    drop(cluster);
    assert!(handle.next_request().await.is_none(), "no further request");
}

#[tokio::test]
async fn a_new_namespace_is_created_with_labels_quota_limits_policies_and_no_token() {
    let config = ClusterConfig { egress_cidrs: vec!["10.20.0.5/32".into()], ..ClusterConfig::default() };
    let (cluster, mut handle) = mock(config);
    let step = call(&cluster, |c| async move { c.ensure_namespace(&stand()).await });

    let get = serve(&mut handle, StatusCode::NOT_FOUND, |_| not_found("namespaces", "draft-login-form")).await;
    assert_eq!((get.method, get.path.as_str()), (Method::GET, "/api/v1/namespaces/draft-login-form"));
    let ns = expect_apply(&mut handle, "/api/v1/namespaces/draft-login-form", "Namespace").await;
    assert_eq!(ns["apiVersion"], "v1");
    assert_eq!(ns["metadata"]["name"], "draft-login-form");
    assert_eq!(ns["metadata"]["annotations"]["draftd.io/expires-at"], "2026-11-27T10:00:00Z");
    let objects = expect_namespace_contents(&mut handle).await;

    let outcome = step.await.unwrap().unwrap();
    assert!(outcome.created);
    assert_eq!(
        outcome.applied,
        [
            "ResourceQuota/draftd-quota",
            "LimitRange/draftd-limits",
            "NetworkPolicy/draftd-default-deny",
            "NetworkPolicy/draftd-allow",
            "ServiceAccount/default"
        ]
    );

    let hard = &objects["quota"]["spec"]["hard"];
    assert_eq!(hard["requests.cpu"], "2");
    assert_eq!(hard["limits.memory"], "8Gi");
    assert_eq!(hard["pods"], "20");
    assert_eq!(hard["services.loadbalancers"], "0");
    let limit = &objects["limits"]["spec"]["limits"][0];
    assert_eq!(limit["type"], "Container");
    assert_eq!(limit["defaultRequest"], json!({ "cpu": "50m", "memory": "64Mi" }));
    assert_eq!(limit["default"], json!({ "cpu": "500m", "memory": "512Mi" }));
    assert_eq!(limit["max"], json!({ "cpu": "2", "memory": "2Gi" }));

    let deny = &objects["deny"]["spec"];
    assert_eq!(deny["podSelector"], json!({}));
    assert_eq!(deny["policyTypes"], json!(["Ingress", "Egress"]));
    assert!(deny.get("ingress").is_none() && deny.get("egress").is_none(), "deny-all has no rules: {deny}");
    let allow = &objects["allow"]["spec"];
    assert_eq!(
        allow["ingress"],
        json!([{ "from": [
            { "podSelector": {} },
            { "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "ingress-nginx" } } }
        ] }])
    );
    assert_eq!(
        allow["egress"],
        json!([
            { "to": [{ "podSelector": {} }] },
            { "to": [{ "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "kube-system" } },
                       "podSelector": { "matchLabels": { "k8s-app": "kube-dns" } } }],
              "ports": [{ "port": 53, "protocol": "UDP" }, { "port": 53, "protocol": "TCP" }] },
            { "to": [{ "ipBlock": { "cidr": "10.20.0.5/32" } }] }
        ])
    );
    assert_eq!(objects["sa"]["automountServiceAccountToken"], false);
    expect_no_more(cluster, handle).await;
}

#[tokio::test]
async fn with_a_service_account_configured_the_stand_role_is_bound_first() {
    let config = ClusterConfig { service_account: Some("draftd/draftd".into()), ..ClusterConfig::default() };
    let (cluster, mut handle) = mock(config);
    let step = call(&cluster, |c| async move { c.ensure_namespace(&stand()).await });
    serve(&mut handle, StatusCode::NOT_FOUND, |_| not_found("namespaces", "draft-login-form")).await;
    expect_apply(&mut handle, "/api/v1/namespaces/draft-login-form", "Namespace").await;
    // Read first: a binding whose roleRef differs cannot be updated, only replaced.
    let read =
        serve(&mut handle, StatusCode::NOT_FOUND, |_| not_found("rolebindings.rbac.authorization.k8s.io", "draftd"))
            .await;
    assert_eq!((read.method, read.path.as_str()), (Method::GET, BINDING));
    let binding = expect_apply(&mut handle, BINDING, "RoleBinding").await;
    assert_eq!(
        binding["roleRef"],
        json!({ "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "draftd-stand" })
    );
    assert_eq!(binding["subjects"], json!([{ "kind": "ServiceAccount", "name": "draftd", "namespace": "draftd" }]));
    expect_namespace_contents(&mut handle).await;
    let outcome = step.await.unwrap().unwrap();
    assert_eq!(outcome.applied[0], "RoleBinding/draftd");
    expect_no_more(cluster, handle).await;
}

const BINDING: &str = "/apis/rbac.authorization.k8s.io/v1/namespaces/draft-login-form/rolebindings/draftd";
const QUOTA: &str = "/api/v1/namespaces/draft-login-form/resourcequotas/draftd-quota";

/// The RoleBinding as the API server returns it, with `role` bound and at `resource_version`.
fn binding(role: &str, resource_version: &str) -> Value {
    json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": { "name": "draftd", "namespace": "draft-login-form", "resourceVersion": resource_version,
                          "uid": "0b9e4f4e-5a43-4cf2-9d0e-3f1c2a7d6b11",
                          "labels": { "app.kubernetes.io/managed-by": "draftd", "draftd.io/stand": "7", "draftd.io/project": "shop" } },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role },
            "subjects": [{ "kind": "ServiceAccount", "name": "draftd", "namespace": "draftd" }] })
}

/// The 403 an apply gets while the authorizer has not caught up with the new RoleBinding.
fn forbidden_quota() -> Value {
    json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "Forbidden", "code": 403,
            "details": { "name": "draftd-quota", "kind": "resourcequotas" },
            "message": "resourcequotas \"draftd-quota\" is forbidden: User \"system:serviceaccount:draftd:draftd\" cannot patch resource \"resourcequotas\" in API group \"\" in the namespace \"draft-login-form\"" })
}

/// The namespace step of a stand with a service account configured, up to its RoleBinding: the
/// namespace is new, the binding is read (absent) and applied.
async fn new_namespace_up_to_the_binding(handle: &mut Handle) {
    serve(handle, StatusCode::NOT_FOUND, |_| not_found("namespaces", "draft-login-form")).await;
    expect_apply(handle, "/api/v1/namespaces/draft-login-form", "Namespace").await;
    serve(handle, StatusCode::NOT_FOUND, |_| not_found("rolebindings.rbac.authorization.k8s.io", "draftd")).await;
    expect_apply(handle, BINDING, "RoleBinding").await;
}

/// The namespace step finds the stand's own namespace and applies it again.
async fn own_namespace_applied_again(handle: &mut Handle) {
    let labels = json!({ "app.kubernetes.io/managed-by": "draftd", "draftd.io/stand": "7" });
    serve(handle, StatusCode::OK, |_| existing(labels, false)).await;
    expect_apply(handle, "/api/v1/namespaces/draft-login-form", "Namespace").await;
}

fn with_service_account() -> ClusterConfig {
    ClusterConfig { service_account: Some("draftd/draftd".into()), ..ClusterConfig::default() }
}

#[tokio::test]
async fn forbidden_right_after_the_role_binding_is_created_is_retried_until_rbac_catches_up() {
    let (cluster, mut handle) = mock(with_service_account());
    let cluster = fast(cluster);
    let step = call(&cluster, |c| async move { c.ensure_namespace(&stand()).await });
    new_namespace_up_to_the_binding(&mut handle).await;
    for _ in 0..2 {
        let refused = serve(&mut handle, StatusCode::FORBIDDEN, |_| forbidden_quota()).await;
        assert_eq!((refused.method, refused.path.as_str()), (Method::PATCH, QUOTA));
    }
    expect_namespace_contents(&mut handle).await;
    let outcome = step.await.unwrap().unwrap();
    assert_eq!(outcome.applied.len(), 6, "{:?}", outcome.applied);
    expect_no_more(cluster, handle).await;
}

#[tokio::test]
async fn forbidden_that_outlasts_rbac_propagation_is_permanent() {
    let (cluster, mut handle) = mock(with_service_account());
    let cluster = fast(cluster);
    let step = call(&cluster, |c| async move { c.ensure_namespace(&stand()).await });
    new_namespace_up_to_the_binding(&mut handle).await;
    // The first attempt and seven retries (about 10 s at the real 2 s poll), then it stands.
    for _ in 0..8 {
        let refused = serve(&mut handle, StatusCode::FORBIDDEN, |_| forbidden_quota()).await;
        assert_eq!((refused.method, refused.path.as_str()), (Method::PATCH, QUOTA));
    }
    let err = step.await.unwrap().unwrap_err();
    assert!(!err.is_transient(), "{err:?}");
    assert_eq!(err.label(), "kubernetes_forbidden");
    assert!(err.to_string().contains("cannot patch resource"), "{err}");
    expect_no_more(cluster, handle).await;
}

#[tokio::test]
async fn forbidden_with_an_unchanged_role_binding_is_not_retried() {
    let (cluster, mut handle) = mock(with_service_account());
    let cluster = fast(cluster);
    let step = call(&cluster, |c| async move { c.ensure_namespace(&stand()).await });
    own_namespace_applied_again(&mut handle).await;
    serve(&mut handle, StatusCode::OK, |_| binding("draftd-stand", "41")).await;
    // An apply that changes nothing keeps the resourceVersion: the authorizer knew it all along.
    let applied = serve(&mut handle, StatusCode::OK, |_| binding("draftd-stand", "41")).await;
    assert_eq!((applied.method, applied.path.as_str()), (Method::PATCH, BINDING));
    serve(&mut handle, StatusCode::FORBIDDEN, |_| forbidden_quota()).await;
    let err = step.await.unwrap().unwrap_err();
    assert_eq!(err.label(), "kubernetes_forbidden");
    expect_no_more(cluster, handle).await;
}

#[tokio::test]
async fn a_changed_stand_role_replaces_the_role_binding_whose_role_ref_cannot_change() {
    let (cluster, mut handle) = mock(with_service_account());
    let cluster = fast(cluster);
    let step = call(&cluster, |c| async move { c.ensure_namespace(&stand()).await });
    own_namespace_applied_again(&mut handle).await;
    let read = serve(&mut handle, StatusCode::OK, |_| binding("draftd-stand-v1", "41")).await;
    assert_eq!((read.method, read.path.as_str()), (Method::GET, BINDING));
    // An apply would be refused with 422 "cannot change roleRef": the binding goes first.
    let delete = serve(&mut handle, StatusCode::OK, |_| {
        json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": { "name": "draftd", "group": "rbac.authorization.k8s.io", "kind": "rolebindings",
                             "uid": "0b9e4f4e-5a43-4cf2-9d0e-3f1c2a7d6b11" } })
    })
    .await;
    assert_eq!((delete.method, delete.path.as_str()), (Method::DELETE, BINDING));
    let created = serve(&mut handle, StatusCode::CREATED, |_| binding("draftd-stand", "57")).await;
    assert_eq!((created.method, created.path.as_str()), (Method::PATCH, BINDING));
    assert_eq!(created.content_type.as_deref(), Some("application/apply-patch+yaml"));
    assert_eq!(created.body["roleRef"]["name"], "draftd-stand");
    // The new binding may not be known to the authorizer yet: a 403 now is retried.
    serve(&mut handle, StatusCode::FORBIDDEN, |_| forbidden_quota()).await;
    expect_namespace_contents(&mut handle).await;
    let outcome = step.await.unwrap().unwrap();
    assert_eq!(outcome.applied[0], "RoleBinding/draftd");
    expect_no_more(cluster, handle).await;
}

#[tokio::test]
async fn a_quota_whose_status_is_not_computed_yet_refuses_for_a_moment_only() {
    let (cluster, mut handle) = mock(ClusterConfig::default());
    let work =
        call(&cluster, |c| async move { c.apply_secret(&stand(), "draft-login-form-db", &credentials("p-1")).await });
    // What the quota admission plugin answers until the quota controller has computed the new
    // ResourceQuota's first status.
    serve(&mut handle, StatusCode::FORBIDDEN, |_| {
        json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "Forbidden", "code": 403,
                "details": { "name": "draft-login-form-db", "kind": "secrets" },
                "message": "secrets \"draft-login-form-db\" is forbidden: status unknown for quota: draftd-quota, resources: count/secrets" })
    })
    .await;
    let err = work.await.unwrap().unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(err.label(), "kubernetes_quota_pending");
    expect_no_more(cluster, handle).await;
}

fn existing(labels: Value, deleting: bool) -> Value {
    let mut ns = json!({ "apiVersion": "v1", "kind": "Namespace",
                         "metadata": { "name": "draft-login-form", "labels": labels },
                         "status": { "phase": "Active" } });
    if deleting {
        ns["metadata"]["deletionTimestamp"] = json!("2026-11-25T09:00:00Z");
        ns["status"]["phase"] = json!("Terminating");
    }
    ns
}

#[tokio::test]
async fn a_namespace_draftd_does_not_manage_is_refused_and_never_touched() {
    let (cluster, mut handle) = mock(ClusterConfig::default());
    let step = call(&cluster, |c| async move { c.ensure_namespace(&stand()).await });
    let labels = json!({ "kubernetes.io/metadata.name": "draft-login-form", "team": "payments" });
    serve(&mut handle, StatusCode::OK, |_| existing(labels, false)).await;
    let err = step.await.unwrap().unwrap_err();
    assert!(matches!(err, ClusterError::NotManaged { .. }), "{err:?}");
    assert!(!err.is_transient());
    assert_eq!(err.label(), "namespace_not_managed");
    assert!(err.to_string().contains("draft-login-form"), "{err}");
    expect_no_more(cluster, handle).await;
}

#[tokio::test]
async fn a_namespace_of_another_stand_is_refused() {
    let (cluster, mut handle) = mock(ClusterConfig::default());
    let step = call(&cluster, |c| async move { c.ensure_namespace(&stand()).await });
    let labels = json!({ "app.kubernetes.io/managed-by": "draftd", "draftd.io/stand": "3" });
    serve(&mut handle, StatusCode::OK, |_| existing(labels, false)).await;
    let err = step.await.unwrap().unwrap_err();
    assert!(matches!(&err, ClusterError::OtherStand { owner, .. } if owner == "3"), "{err:?}");
    expect_no_more(cluster, handle).await;
}

#[tokio::test]
async fn a_namespace_still_being_deleted_is_a_transient_failure() {
    let (cluster, mut handle) = mock(ClusterConfig::default());
    let step = call(&cluster, |c| async move { c.ensure_namespace(&stand()).await });
    let labels = json!({ "app.kubernetes.io/managed-by": "draftd", "draftd.io/stand": "7" });
    serve(&mut handle, StatusCode::OK, |_| existing(labels, true)).await;
    let err = step.await.unwrap().unwrap_err();
    assert!(matches!(err, ClusterError::Terminating { .. }), "{err:?}");
    assert!(err.is_transient());
    expect_no_more(cluster, handle).await;
}

#[tokio::test]
async fn the_stands_own_namespace_is_applied_again_and_a_token_mounted_when_asked() {
    let (cluster, mut handle) = mock(ClusterConfig::default());
    let meta = StandMeta { service_account_token: true, ..stand() };
    let step = call(&cluster, |c| async move { c.ensure_namespace(&meta).await });
    own_namespace_applied_again(&mut handle).await;
    let objects = expect_namespace_contents(&mut handle).await;
    let outcome = step.await.unwrap().unwrap();
    assert!(!outcome.created);
    assert_eq!(objects["sa"]["automountServiceAccountToken"], true);
    let allow = &objects["allow"]["spec"]["egress"];
    assert_eq!(allow.as_array().unwrap().len(), 2, "no CIDR rule without egress_cidrs: {allow}");
    expect_no_more(cluster, handle).await;
}

#[tokio::test]
async fn api_refusals_are_permanent_and_server_errors_transient() {
    for (status, transient, label) in [
        (StatusCode::FORBIDDEN, false, "kubernetes_forbidden"),
        (StatusCode::UNPROCESSABLE_ENTITY, false, "kubernetes_api"),
        (StatusCode::INTERNAL_SERVER_ERROR, true, "kubernetes_api"),
        (StatusCode::TOO_MANY_REQUESTS, true, "kubernetes_api"),
    ] {
        let (cluster, mut handle) = mock(ClusterConfig::default());
        let step = call(&cluster, |c| async move { c.ensure_namespace(&stand()).await });
        serve(&mut handle, StatusCode::NOT_FOUND, |_| not_found("namespaces", "draft-login-form")).await;
        let refusal = json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": status.as_u16(),
                              "reason": "Forbidden", "message": "namespaces is forbidden: no" });
        serve(&mut handle, status, |_| refusal).await;
        let err = step.await.unwrap().unwrap_err();
        assert_eq!(err.is_transient(), transient, "{status}: {err:?}");
        assert_eq!(err.label(), label, "{status}");
        expect_no_more(cluster, handle).await;
    }
}

// ---------------------------------------------------------------------------------------------------
// Connecting

const KUBECONFIG: &str = r#"
apiVersion: v1
kind: Config
current-context: kind-draftd
clusters:
- name: kind-draftd
  cluster:
    server: https://127.0.0.1:6443
    insecure-skip-tls-verify: true
- name: other
  cluster:
    server: https://127.0.0.1:7443
    insecure-skip-tls-verify: true
contexts:
- name: kind-draftd
  context: { cluster: kind-draftd, user: admin }
- name: other
  context: { cluster: other, user: admin }
users:
- name: admin
  user: { token: not-a-real-token }
"#;

#[tokio::test]
async fn the_configured_kubeconfig_and_context_are_used() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, KUBECONFIG).unwrap();
    let mut cluster = ClusterConfig { kubeconfig: Some(path.clone()), ..ClusterConfig::default() };
    let config = draftd::cluster::client::config(&cluster).await.unwrap();
    assert_eq!(config.cluster_url.to_string(), "https://127.0.0.1:6443/");
    cluster.context = Some("other".into());
    let config = draftd::cluster::client::config(&cluster).await.unwrap();
    assert_eq!(config.cluster_url.to_string(), "https://127.0.0.1:7443/");
    draftd::cluster::client::connect(&cluster).await.unwrap();

    cluster.context = Some("missing".into());
    let err = draftd::cluster::client::config(&cluster).await.unwrap_err().to_string();
    assert!(err.contains("missing") && err.contains(&path.display().to_string()), "{err}");
}

#[tokio::test]
async fn an_unreadable_kubeconfig_is_a_clear_error() {
    let cluster = ClusterConfig { kubeconfig: Some("/nonexistent/kubeconfig".into()), ..ClusterConfig::default() };
    let Err(err) = draftd::cluster::client::connect(&cluster).await else { panic!("connected without a kubeconfig") };
    assert!(matches!(err, ClusterError::Config(_)), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/kubeconfig"), "{err}");
}

// ---------------------------------------------------------------------------------------------------
// Teardown

fn managed(deleting: bool) -> Value {
    existing(json!({ "app.kubernetes.io/managed-by": "draftd", "draftd.io/stand": "7" }), deleting)
}

fn fast(cluster: Kubernetes) -> Kubernetes {
    cluster.with_poll(std::time::Duration::from_millis(5))
}

#[tokio::test]
async fn teardown_deletes_with_background_propagation_and_waits_until_the_namespace_is_gone() {
    let (cluster, mut handle) = mock(ClusterConfig::default());
    let cluster = fast(cluster);
    let step =
        call(
            &cluster,
            |c| async move { c.delete_namespace("draft-login-form", std::time::Duration::from_secs(30)).await },
        );
    let path = "/api/v1/namespaces/draft-login-form";
    let get = serve(&mut handle, StatusCode::OK, |_| managed(false)).await;
    assert_eq!((get.method, get.path.as_str()), (Method::GET, path));
    let delete = serve(&mut handle, StatusCode::OK, |_| managed(true)).await;
    assert_eq!((delete.method, delete.path.as_str()), (Method::DELETE, path));
    // Not Foreground: its foregroundDeletion finalizer can leave a namespace stuck (kubernetes#111251);
    // the namespace controller deletes the content either way.
    assert_eq!(delete.body["propagationPolicy"], "Background", "{}", delete.body);
    let still = serve(&mut handle, StatusCode::OK, |_| managed(true)).await;
    assert_eq!((still.method, still.path.as_str()), (Method::GET, path));
    let gone = serve(&mut handle, StatusCode::NOT_FOUND, |_| not_found("namespaces", "draft-login-form")).await;
    assert_eq!(gone.method, Method::GET);
    assert_eq!(step.await.unwrap().unwrap(), draftd::cluster::NamespaceGone::Deleted);
    expect_no_more(cluster, handle).await;
}

/// After an extend: one merge patch of the annotation (an apply of a partial Namespace would drop
/// the labels draftd's earlier applies own); nothing for a namespace that is not there or going.
#[tokio::test]
async fn extend_moves_the_expiry_annotation_with_a_merge_patch() {
    use chrono::TimeZone;
    let at = chrono::Utc.with_ymd_and_hms(2026, 11, 28, 9, 30, 0).unwrap();
    let (cluster, mut handle) = mock(ClusterConfig::default());
    let step = call(&cluster, move |c| async move { c.annotate_expiry("draft-login-form", at).await });
    let path = "/api/v1/namespaces/draft-login-form";
    let get = serve(&mut handle, StatusCode::OK, |_| managed(false)).await;
    assert_eq!((get.method, get.path.as_str()), (Method::GET, path));
    let patch = serve(&mut handle, StatusCode::OK, |_| managed(false)).await;
    assert_eq!((patch.method, patch.path.as_str()), (Method::PATCH, path));
    assert_eq!(patch.content_type.as_deref(), Some("application/merge-patch+json"));
    assert_eq!(
        patch.body,
        json!({ "metadata": { "annotations": { "draftd.io/expires-at": "2026-11-28T09:30:00Z" } } })
    );
    assert!(step.await.unwrap().unwrap());
    expect_no_more(cluster, handle).await;

    let (cluster, mut handle) = mock(ClusterConfig::default());
    let step = call(&cluster, move |c| async move { c.annotate_expiry("draft-login-form", at).await });
    serve(&mut handle, StatusCode::NOT_FOUND, |_| not_found("namespaces", "draft-login-form")).await;
    assert!(!step.await.unwrap().unwrap(), "never deployed: nothing to annotate");
    expect_no_more(cluster, handle).await;

    let (cluster, mut handle) = mock(ClusterConfig::default());
    let step = call(&cluster, move |c| async move { c.annotate_expiry("draft-login-form", at).await });
    serve(&mut handle, StatusCode::OK, |_| existing(json!({ "team": "payments" }), false)).await;
    assert!(matches!(step.await.unwrap().unwrap_err(), ClusterError::NotManaged { .. }));
    expect_no_more(cluster, handle).await;
}

#[tokio::test]
async fn teardown_of_an_absent_namespace_is_done_at_once() {
    let (cluster, mut handle) = mock(ClusterConfig::default());
    let step =
        call(
            &cluster,
            |c| async move { c.delete_namespace("draft-login-form", std::time::Duration::from_secs(30)).await },
        );
    serve(&mut handle, StatusCode::NOT_FOUND, |_| not_found("namespaces", "draft-login-form")).await;
    assert_eq!(step.await.unwrap().unwrap(), draftd::cluster::NamespaceGone::Absent);
    expect_no_more(cluster, handle).await;
}

#[tokio::test]
async fn teardown_never_deletes_a_namespace_draftd_does_not_manage() {
    let (cluster, mut handle) = mock(ClusterConfig::default());
    let step =
        call(
            &cluster,
            |c| async move { c.delete_namespace("draft-login-form", std::time::Duration::from_secs(30)).await },
        );
    serve(&mut handle, StatusCode::OK, |_| existing(json!({ "team": "payments" }), false)).await;
    let err = step.await.unwrap().unwrap_err();
    assert!(matches!(err, ClusterError::NotManaged { .. }), "{err:?}");
    expect_no_more(cluster, handle).await;
}

#[tokio::test]
async fn teardown_that_cannot_finish_reports_what_blocks_it() {
    let (cluster, mut handle) = mock(ClusterConfig::default());
    let cluster = fast(cluster);
    let step = call(&cluster, |c| async move {
        c.delete_namespace("draft-login-form", std::time::Duration::from_millis(60)).await
    });
    // Already terminating: no second DELETE, only reads until the wait runs out.
    let mut stuck = managed(true);
    stuck["spec"] = json!({ "finalizers": ["kubernetes"] });
    stuck["status"]["conditions"] = json!([
        { "type": "NamespaceFinalizersRemaining", "status": "True",
          "message": "Some content in the namespace has finalizers remaining: example.com/protect in 1 resource instances" },
        { "type": "NamespaceDeletionDiscoveryFailure", "status": "False", "message": "All resources successfully discovered" }
    ]);
    let responder = tokio::spawn(async move {
        let mut reads = 0;
        while let Some((request, send)) = handle.next_request().await {
            assert_eq!(request.method(), Method::GET, "nothing but reads after the namespace is terminating");
            reads += 1;
            send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&stuck).unwrap())).unwrap());
        }
        reads
    });
    let err = step.await.unwrap().unwrap_err();
    drop(cluster);
    assert!(responder.await.unwrap() >= 2, "it looked again before giving up");
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(err.label(), "namespace_deletion_blocked");
    let text = err.to_string();
    assert!(text.contains("namespace finalizers kubernetes"), "{text}");
    assert!(text.contains("example.com/protect"), "{text}");
    assert!(!text.contains("successfully discovered"), "only conditions that hold are blockers: {text}");
}

// ---------------------------------------------------------------------------------------------------
// Orphan scan

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn the_orphan_scan_finds_draftd_namespaces_without_a_live_stand(pool: sqlx::PgPool) {
    use draftd::cluster::orphans::{self, Orphan, OrphanReason};
    let now = Utc::now();
    let stand = |branch: &str, namespace: &str, state: &str, expires: chrono::DateTime<Utc>| {
        let pool = pool.clone();
        let (branch, namespace, state) = (branch.to_owned(), namespace.to_owned(), state.to_owned());
        async move {
            sqlx::query_scalar::<_, i64>(
                "insert into stands (project, branch, namespace, state, expires_at) values ('shop', $1, $2, $3, $4)
                 returning stand_id",
            )
            .bind(branch)
            .bind(namespace)
            .bind(state)
            .bind(expires)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let live = stand("feature/live", "draft-live", "active", now + chrono::Duration::hours(5)).await;
    let removed = stand("feature/gone", "draft-gone", "removed", now + chrono::Duration::hours(5)).await;
    let expired_at = (now - chrono::Duration::hours(1)).trunc_subsecs(0);
    let expired = stand("feature/old", "draft-old", "active", expired_at).await;
    let busy = stand("feature/busy", "draft-busy", "active", now - chrono::Duration::hours(1)).await;
    sqlx::query("insert into runs (stand_id, number, kind, trigger, automatic, epoch) values ($1, 1, 'deploy', 'pushed', true, 0)")
        .bind(busy)
        .execute(&pool)
        .await
        .unwrap();
    let reused = stand("feature/reused", "draft-reused", "active", now + chrono::Duration::hours(5)).await;

    let ns = |name: &str, stand: Option<i64>, terminating: bool| {
        let mut labels = json!({ "app.kubernetes.io/managed-by": "draftd", "draftd.io/project": "shop" });
        if let Some(id) = stand {
            labels["draftd.io/stand"] = json!(id.to_string());
        }
        let mut v = json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name, "labels": labels } });
        if terminating {
            v["metadata"]["deletionTimestamp"] = json!("2026-11-25T09:00:00Z");
        }
        v
    };
    let items = json!([
        ns("draft-live", Some(live), false),
        ns("draft-gone", Some(removed), false),
        ns("draft-old", Some(expired), false),
        ns("draft-busy", Some(busy), false),
        ns("draft-reused", Some(reused + 100), false),
        ns("draft-unknown", Some(999), false),
        ns("draft-leaving", Some(998), true),
        // Another installation's project in the same cluster: never this one's orphan.
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "draft-theirs", "labels": {
            "app.kubernetes.io/managed-by": "draftd", "draftd.io/project": "theirs", "draftd.io/stand": "5" } } }),
    ]);
    let (cluster, mut handle) = mock(ClusterConfig::default());
    let scan = tokio::spawn({
        let (cluster, pool) = (cluster.clone(), pool.clone());
        async move { orphans::scan(&cluster, &pool, now, &["shop"]).await }
    });
    let list = serve(
        &mut handle,
        StatusCode::OK,
        |_| json!({ "apiVersion": "v1", "kind": "NamespaceList", "metadata": {}, "items": items }),
    )
    .await;
    assert_eq!((list.method, list.path.as_str()), (Method::GET, "/api/v1/namespaces"));
    assert_eq!(list.query.get("labelSelector").map(String::as_str), Some("app.kubernetes.io/managed-by=draftd"));
    let mut found = scan.await.unwrap().unwrap();
    found.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    assert_eq!(
        found,
        vec![
            Orphan { namespace: "draft-gone".into(), reason: OrphanReason::StandRemoved },
            Orphan { namespace: "draft-old".into(), reason: OrphanReason::Expired { at: expired_at } },
            Orphan {
                namespace: "draft-reused".into(),
                reason: OrphanReason::OtherStand {
                    labelled: Some(StandId::new(reused + 100)),
                    owner: StandId::new(reused)
                }
            },
            Orphan { namespace: "draft-unknown".into(), reason: OrphanReason::NoStand },
        ]
    );
    expect_no_more(cluster, handle).await;
}

// ---------------------------------------------------------------------------------------------------
// verify: rollout, diagnostics, the 5xx gate

use draftd::cluster::verify::{self, ProbeResult, Prober};
use std::time::Duration;

fn deployment(name: &str, generation: i64, status: Value) -> Value {
    json!({ "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": name, "namespace": "draft-login-form", "generation": generation },
            "spec": { "replicas": 1, "selector": { "matchLabels": { "app": name } },
                      "template": { "metadata": { "labels": { "app": name } }, "spec": { "containers": [] } } },
            "status": status })
}

fn list(kind: &str, items: Value) -> Value {
    json!({ "apiVersion": "v1", "kind": format!("{kind}List"), "metadata": {}, "items": items })
}

/// Answers one round of the rollout check: the Deployments list, then the StatefulSets list.
async fn rollout_round(handle: &mut Handle, deployments: Value) {
    let d = serve(handle, StatusCode::OK, |_| list("Deployment", deployments)).await;
    assert_eq!(d.path, "/apis/apps/v1/namespaces/draft-login-form/deployments");
    assert_eq!(d.query.get("labelSelector").map(String::as_str), Some("app.kubernetes.io/instance=draft-login-form"));
    let s = serve(handle, StatusCode::OK, |_| list("StatefulSet", json!([]))).await;
    assert_eq!(s.path, "/apis/apps/v1/namespaces/draft-login-form/statefulsets");
}

#[tokio::test]
async fn rollout_waits_until_the_new_replicas_are_available() {
    let (cluster, mut handle) = mock(ClusterConfig::default());
    let cluster = fast(cluster);
    let wait = call(&cluster, |c| async move {
        c.wait_rollout("draft-login-form", "draft-login-form", Duration::from_secs(30)).await
    });
    // Not yet observed; then observed with the old replica still there; then done.
    rollout_round(&mut handle, json!([deployment("app", 2, json!({ "observedGeneration": 1, "replicas": 1 }))])).await;
    let surge = json!({ "observedGeneration": 2, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 1 });
    rollout_round(&mut handle, json!([deployment("app", 2, surge)])).await;
    let done = json!({ "observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1 });
    rollout_round(&mut handle, json!([deployment("app", 2, done)])).await;
    assert_eq!(wait.await.unwrap().unwrap(), ["Deployment/app"]);
    expect_no_more(cluster, handle).await;
}

#[tokio::test]
async fn a_rollout_that_does_not_finish_in_time_says_where_each_workload_stands() {
    let (cluster, mut handle) = mock(ClusterConfig::default());
    let cluster = fast(cluster);
    let wait = call(&cluster, |c| async move {
        c.wait_rollout("draft-login-form", "draft-login-form", Duration::from_millis(50)).await
    });
    let stuck = json!({ "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 0 });
    let responder = tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let body = if request.uri().path().ends_with("/deployments") {
                list("Deployment", json!([deployment("app", 1, stuck.clone())]))
            } else {
                list("StatefulSet", json!([]))
            };
            send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap());
        }
    });
    let err = wait.await.unwrap().unwrap_err();
    drop(cluster);
    responder.await.unwrap();
    assert_eq!(err.label(), "rollout_timeout");
    assert!(!err.is_transient(), "waiting longer is the timeout's job, not a retry's");
    assert!(err.to_string().contains("Deployment/app (0 of 1 updated replicas available)"), "{err}");
}

#[tokio::test]
async fn a_deployment_past_its_progress_deadline_fails_at_once() {
    let (cluster, mut handle) = mock(ClusterConfig::default());
    let wait = call(&cluster, |c| async move {
        c.wait_rollout("draft-login-form", "draft-login-form", Duration::from_secs(30)).await
    });
    let failed = json!({ "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 0,
        "conditions": [{ "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                         "message": "ReplicaSet \"app-5d4\" has timed out progressing." }] });
    rollout_round(&mut handle, json!([deployment("app", 1, failed)])).await;
    let err = wait.await.unwrap().unwrap_err();
    assert!(matches!(&err, ClusterError::RolloutFailed { workload, .. } if workload == "Deployment/app"), "{err:?}");
    assert!(err.to_string().contains("timed out progressing"), "{err}");
    expect_no_more(cluster, handle).await;
}

#[tokio::test]
async fn a_stale_progress_deadline_of_the_previous_revision_does_not_fail_a_new_rollout() {
    let (cluster, mut handle) = mock(ClusterConfig::default());
    let cluster = fast(cluster);
    let wait = call(&cluster, |c| async move {
        c.wait_rollout("draft-login-form", "draft-login-form", Duration::from_secs(30)).await
    });
    // Right after `helm upgrade`: generation 2 not yet observed, the condition still revision 1's.
    let stale = json!({ "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 0,
        "conditions": [{ "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                         "message": "ReplicaSet \"app-5d4\" has timed out progressing." }] });
    rollout_round(&mut handle, json!([deployment("app", 2, stale)])).await;
    let done = json!({ "observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1,
        "conditions": [{ "type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                         "message": "ReplicaSet \"app-7f9\" has successfully progressed." }] });
    rollout_round(&mut handle, json!([deployment("app", 2, done)])).await;
    assert_eq!(wait.await.unwrap().unwrap(), ["Deployment/app"]);
    expect_no_more(cluster, handle).await;
}

fn statefulset(name: &str, replicas: i32, strategy: Value, status: Value) -> Value {
    json!({ "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": { "name": name, "namespace": "draft-login-form", "generation": 3 },
            "spec": { "replicas": replicas, "serviceName": name, "updateStrategy": strategy,
                      "selector": { "matchLabels": { "app": name } },
                      "template": { "metadata": { "labels": { "app": name } }, "spec": { "containers": [] } } },
            "status": status })
}

#[tokio::test]
async fn statefulsets_updated_on_delete_or_up_to_a_partition_are_done_when_their_pods_are() {
    let (cluster, mut handle) = mock(ClusterConfig::default());
    let cluster = fast(cluster);
    let wait = call(&cluster, |c| async move {
        c.wait_rollout("draft-login-form", "draft-login-form", Duration::from_millis(300)).await
    });
    // OnDelete: the new revision waits for someone to delete the pods; both pods are ready.
    let on_delete = statefulset(
        "cache",
        2,
        json!({ "type": "OnDelete" }),
        json!({ "observedGeneration": 3, "replicas": 2, "readyReplicas": 2, "currentReplicas": 2, "updatedReplicas": 0,
                "currentRevision": "cache-6c9f", "updateRevision": "cache-7d8e" }),
    );
    // Partition 2 of 3: only pod 2 is updated, on purpose; all three ready.
    let partitioned = statefulset(
        "db",
        3,
        json!({ "type": "RollingUpdate", "rollingUpdate": { "partition": 2 } }),
        json!({ "observedGeneration": 3, "replicas": 3, "readyReplicas": 3, "currentReplicas": 2, "updatedReplicas": 1,
                "currentRevision": "db-5b7c", "updateRevision": "db-8a1f" }),
    );
    let statefulsets = json!([on_delete, partitioned]);
    let responder = tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let body = if request.uri().path().ends_with("/deployments") {
                list("Deployment", json!([]))
            } else {
                list("StatefulSet", statefulsets.clone())
            };
            send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap());
        }
    });
    let result = wait.await.unwrap();
    drop(cluster);
    responder.await.unwrap();
    assert_eq!(result.unwrap(), ["StatefulSet/cache", "StatefulSet/db"]);
}

#[test]
fn a_partitioned_statefulset_waits_for_the_pods_above_its_partition() {
    let sts = |updated: i32, ready: i32| -> k8s_openapi::api::apps::v1::StatefulSet {
        serde_json::from_value(statefulset(
            "db",
            3,
            json!({ "type": "RollingUpdate", "rollingUpdate": { "partition": 1 } }),
            json!({ "observedGeneration": 3, "replicas": 3, "readyReplicas": ready, "updatedReplicas": updated,
                    "currentRevision": "db-5b7c", "updateRevision": "db-8a1f" }),
        ))
        .unwrap()
    };
    use verify::RolloutState;
    assert_eq!(
        verify::statefulset_state(&sts(1, 3)),
        RolloutState::Progressing("1 of 2 pods updated (partition 1)".into())
    );
    assert_eq!(verify::statefulset_state(&sts(2, 2)), RolloutState::Progressing("2 of 3 pods ready".into()));
    assert_eq!(verify::statefulset_state(&sts(2, 3)), RolloutState::Done);
}

#[tokio::test]
async fn a_release_without_labelled_workloads_fails_verify_instead_of_passing_unchecked() {
    let (cluster, mut handle) = mock(ClusterConfig::default());
    let wait = call(&cluster, |c| async move {
        c.wait_rollout("draft-login-form", "draft-login-form", Duration::from_secs(30)).await
    });
    rollout_round(&mut handle, json!([])).await;
    let err = wait.await.unwrap().unwrap_err();
    assert!(matches!(err, ClusterError::NoWorkloads { .. }), "{err:?}");
    assert!(!err.is_transient());
    assert_eq!(err.label(), "rollout_no_workloads");
    let text = err.to_string();
    assert!(text.contains("app.kubernetes.io/instance=draft-login-form"), "{text}");
    assert!(text.contains("app.kubernetes.io/instance: {{ .Release.Name }}"), "{text}");
    expect_no_more(cluster, handle).await;
}

fn pod(name: &str, phase: &str, ready: bool, containers: Value) -> Value {
    json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name, "namespace": "draft-login-form" },
            "status": { "phase": phase,
                        "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }],
                        "containerStatuses": containers } })
}

fn container(name: &str, ready: bool, restarts: i32, state: Value, last: Value) -> Value {
    json!({ "name": name, "ready": ready, "restartCount": restarts, "image": "app:1", "imageID": "",
            "state": state, "lastState": last })
}

#[tokio::test]
async fn diagnostics_explain_pods_that_are_not_ready_with_log_tails_and_warning_events() {
    let (cluster, mut handle) = mock(ClusterConfig::default());
    let diagnose = call(&cluster, |c| async move { c.diagnose("draft-login-form").await });
    let crashing = container(
        "app",
        false,
        4,
        json!({ "waiting": { "reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container" } }),
        json!({ "terminated": { "exitCode": 137, "reason": "OOMKilled" } }),
    );
    let pulling = container(
        "app",
        false,
        0,
        json!({ "waiting": { "reason": "ImagePullBackOff", "message": "Back-off pulling image \"app:draft-x\"" } }),
        json!({}),
    );
    let mut unschedulable = pod("app-3", "Pending", false, json!([]));
    unschedulable["status"]["conditions"] = json!([{ "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient memory." }]);
    let pods = json!([
        pod("app-1", "Running", false, json!([crashing])),
        pod("app-2", "Pending", false, json!([pulling])),
        unschedulable,
        pod(
            "mock-payments-1",
            "Running",
            true,
            json!([container("wiremock", true, 0, json!({ "running": {} }), json!({}))])
        ),
        pod(
            "migrate-1",
            "Succeeded",
            false,
            json!([container(
                "migrate",
                false,
                0,
                json!({ "terminated": { "exitCode": 0, "reason": "Completed" } }),
                json!({})
            )])
        ),
    ]);
    let listed = serve(&mut handle, StatusCode::OK, |_| list("Pod", pods)).await;
    assert_eq!(listed.path, "/api/v1/namespaces/draft-login-form/pods");
    // Only the crash loop has a log, and it is the previous instance's.
    let (request, send) = handle.next_request().await.unwrap();
    assert_eq!(request.uri().path(), "/api/v1/namespaces/draft-login-form/pods/app-1/log");
    let query: HashMap<String, String> =
        form_urlencoded::parse(request.uri().query().unwrap().as_bytes()).into_owned().collect();
    assert_eq!(query.get("container").map(String::as_str), Some("app"));
    assert_eq!(query.get("previous").map(String::as_str), Some("true"));
    assert_eq!(query.get("tailLines").map(String::as_str), Some("50"));
    send.send_response(Response::builder().body(Body::from(b"starting\nout of memory: killed\n".to_vec())).unwrap());
    let events = json!([
        { "apiVersion": "v1", "kind": "Event", "metadata": { "name": "e2", "namespace": "draft-login-form" },
          "involvedObject": { "kind": "Pod", "name": "app-2" }, "reason": "Failed", "type": "Warning",
          "message": "Failed to pull image \"app:draft-x\": not found", "lastTimestamp": "2026-11-25T10:02:00Z" },
        { "apiVersion": "v1", "kind": "Event", "metadata": { "name": "e1", "namespace": "draft-login-form" },
          "involvedObject": { "kind": "Pod", "name": "app-1" }, "reason": "BackOff", "type": "Warning",
          "message": "Back-off restarting failed container", "lastTimestamp": "2026-11-25T10:01:00Z" }
    ]);
    let ev = serve(&mut handle, StatusCode::OK, |_| list("Event", events)).await;
    assert_eq!(ev.path, "/api/v1/namespaces/draft-login-form/events");
    assert_eq!(ev.query.get("fieldSelector").map(String::as_str), Some("type=Warning"));

    let d = diagnose.await.unwrap().unwrap();
    let names: Vec<&str> = d.pods.iter().map(|p| p.pod.as_str()).collect();
    assert_eq!(names, ["app-1", "app-2", "app-3"], "ready pods and finished Jobs are not problems");
    let crash = &d.pods[0].containers[0];
    assert_eq!(crash.reason, "CrashLoopBackOff (OOMKilled)");
    assert_eq!(crash.restarts, 4);
    assert_eq!(crash.log_tail.as_deref(), Some("starting\nout of memory: killed\n"));
    let pull = &d.pods[1].containers[0];
    assert_eq!(pull.reason, "ImagePullBackOff");
    assert!(pull.message.as_deref().unwrap().contains("app:draft-x"));
    assert_eq!(pull.log_tail, None);
    assert_eq!(d.pods[2].containers[0].reason, "Unschedulable");
    assert_eq!(
        d.events,
        [
            "Pod/app-1: BackOff: Back-off restarting failed container",
            "Pod/app-2: Failed: Failed to pull image \"app:draft-x\": not found"
        ],
        "oldest first"
    );
    expect_no_more(cluster, handle).await;
}

/// A local stand-in for a stand: answers 200, or 500 on the listed request numbers, or never.
async fn stand_server(fail_on: Vec<usize>, hang: bool) -> (String, tokio::task::JoinHandle<()>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let seen = std::sync::Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/health/ready",
        axum::routing::get(move || {
            let (seen, fail_on) = (seen.clone(), fail_on.clone());
            async move {
                let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
                if hang {
                    std::future::pending::<()>().await;
                }
                if fail_on.contains(&n) { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (format!("http://{addr}/health/ready"), tokio::spawn(async move { axum::serve(listener, app).await.unwrap() }))
}

#[tokio::test]
async fn the_gate_passes_a_stand_that_answers_every_probe() {
    let (url, server) = stand_server(vec![], false).await;
    let report = verify::gate(&verify::UrlProber::new(&url), 5, Duration::from_millis(100), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(report.probes, 5);
    assert_eq!(report.statuses.get("200"), Some(&5));
    server.abort();
}

#[tokio::test]
async fn the_gate_fails_on_the_first_5xx() {
    let (url, server) = stand_server(vec![3], false).await;
    let err = verify::gate(&verify::UrlProber::new(&url), 5, Duration::from_millis(100), Duration::from_secs(2))
        .await
        .unwrap_err();
    assert_eq!((err.attempt, err.outcome.as_str()), (3, "answered 500"));
    assert!(err.to_string().contains(&url), "{err}");
    server.abort();
}

#[tokio::test]
async fn the_gate_fails_a_stand_that_hangs_or_is_not_listening() {
    let (url, server) = stand_server(vec![], true).await;
    let err = verify::gate(&verify::UrlProber::new(&url), 3, Duration::from_millis(50), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(err.attempt, 1);
    assert!(err.outcome.starts_with("did not answer within"), "{}", err.outcome);
    server.abort();

    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let prober = verify::UrlProber::new(format!("http://{closed}/"));
    assert_eq!(prober.probe(Duration::from_secs(2)).await, ProbeResult::Unreachable);
}

#[tokio::test]
async fn the_service_is_probed_through_the_api_server_proxy() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let prober = draftd::cluster::ServiceProxyProber::new(
        kube::Client::new(service, "default"),
        "draft-login-form",
        "draft-login-form",
        "8080",
        "/health/ready",
    );
    let probes = tokio::spawn(async move {
        let first = prober.probe(Duration::from_secs(2)).await;
        let second = prober.probe(Duration::from_secs(2)).await;
        (first, second)
    });
    for status in [StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE] {
        let seen = serve(&mut handle, status, |_| json!({})).await;
        assert_eq!(seen.method, Method::GET);
        assert_eq!(seen.path, "/api/v1/namespaces/draft-login-form/services/draft-login-form:8080/proxy/health/ready");
    }
    assert_eq!(probes.await.unwrap(), (ProbeResult::Status(200), ProbeResult::Status(503)));
}

/// Takes the next request, asserts it is the proxy GET, and answers with `status`, a content type
/// and a raw body.
async fn answer_proxy(handle: &mut Handle, status: StatusCode, content_type: &str, body: &str) {
    let (request, send) = handle.next_request().await.expect("the prober sent a request");
    assert_eq!(request.method(), Method::GET);
    assert_eq!(
        request.uri().path(),
        "/api/v1/namespaces/draft-login-form/services/draft-login-form:http/proxy/health/ready"
    );
    send.send_response(
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Body::from(body.as_bytes().to_vec()))
            .unwrap(),
    );
}

/// One probe through a mocked API server answering `status`, `content_type`, `body`.
async fn probe_once(status: StatusCode, content_type: &str, body: Value) -> ProbeResult {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let prober = draftd::cluster::ServiceProxyProber::new(
        kube::Client::new(service, "default"),
        "draft-login-form",
        "draft-login-form",
        "http",
        "/health/ready",
    );
    let probe = tokio::spawn(async move { prober.probe(Duration::from_secs(2)).await });
    let body = if let Some(text) = body.as_str() { text.to_owned() } else { body.to_string() };
    answer_proxy(&mut handle, status, content_type, &body).await;
    probe.await.unwrap()
}

fn api_status(code: u16, reason: &str, message: &str, details: Value) -> Value {
    json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "details": details, "code": code })
}

fn refused(result: ProbeResult) -> String {
    match result {
        ProbeResult::Refused(why) => why,
        other => panic!("expected the API server's own answer to be told apart, got {other:?}"),
    }
}

#[tokio::test]
async fn the_api_servers_own_errors_are_not_counted_as_the_apps_answers() {
    let json_type = "application/json";
    // No such Service: before, a "healthy 4xx app".
    let why = refused(
        probe_once(
            StatusCode::NOT_FOUND,
            json_type,
            api_status(
                404,
                "NotFound",
                "services \"draft-login-form\" not found",
                json!({ "name": "draft-login-form", "kind": "services" }),
            ),
        )
        .await,
    );
    assert!(why.contains("Service draft-login-form:http in draft-login-form"), "{why}");
    assert!(why.contains("404 NotFound") && why.contains("services \"draft-login-form\" not found"), "{why}");
    assert!(why.contains("no Service draft-login-form"), "{why}");

    // No right to proxy.
    let why = refused(
        probe_once(
            StatusCode::FORBIDDEN,
            json_type,
            api_status(
                403,
                "Forbidden",
                "services \"draft-login-form\" is forbidden: User \"system:serviceaccount:draftd:draftd\" cannot get resource \"services/proxy\" in API group \"\" in the namespace \"draft-login-form\"",
                json!({ "name": "draft-login-form", "kind": "services" }),
            ),
        )
        .await,
    );
    assert!(why.contains("403 Forbidden") && why.contains("services/proxy"), "{why}");

    // No ready pod behind the Service.
    let why = refused(
        probe_once(
            StatusCode::SERVICE_UNAVAILABLE,
            json_type,
            api_status(503, "ServiceUnavailable", "no endpoints available for service \"draft-login-form\"", json!({})),
        )
        .await,
    );
    assert!(why.contains("no endpoints available") && why.contains("no ready pod"), "{why}");

    // The pod cannot be dialled: draftd-default-deny keeps the API server out.
    for message in [
        "error trying to reach service: dial tcp 10.244.1.7:8080: i/o timeout",
        "error trying to reach service: proxy error from 127.0.0.1:6443 while dialing 10.42.1.78:8080, code 502: 502 Bad Gateway",
    ] {
        let why = refused(
            probe_once(
                StatusCode::SERVICE_UNAVAILABLE,
                json_type,
                api_status(503, "ServiceUnavailable", message, json!({})),
            )
            .await,
        );
        assert!(why.contains(message), "{why}");
        assert!(why.contains("draftd-default-deny"), "{why}");
        assert!(why.contains("[[cluster.ingress_from]]") && why.contains("cidr = "), "{why}");
        assert!(why.contains("`host`"), "{why}");
    }

    // The app's own answers pass through as they are, JSON or not.
    let own = json!({ "error": "not found" });
    assert_eq!(probe_once(StatusCode::NOT_FOUND, json_type, own).await, ProbeResult::Status(404));
    assert_eq!(
        probe_once(StatusCode::UNAUTHORIZED, "text/html; charset=utf-8", json!("<h1>sign in</h1>")).await,
        ProbeResult::Status(401)
    );
    assert_eq!(
        probe_once(StatusCode::SERVICE_UNAVAILABLE, "text/plain", json!("warming up")).await,
        ProbeResult::Status(503)
    );
}

#[tokio::test]
async fn the_gate_fails_when_the_api_server_answers_for_a_missing_service() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let prober = draftd::cluster::ServiceProxyProber::new(
        kube::Client::new(service, "default"),
        "draft-login-form",
        "draft-login-form",
        "http",
        "/health/ready",
    );
    let gate =
        tokio::spawn(async move { verify::gate(&prober, 3, Duration::from_millis(20), Duration::from_secs(2)).await });
    let status = api_status(
        404,
        "NotFound",
        "services \"draft-login-form\" not found",
        json!({ "name": "draft-login-form", "kind": "services" }),
    );
    answer_proxy(&mut handle, StatusCode::NOT_FOUND, "application/json", &status.to_string()).await;
    let err = gate.await.unwrap().unwrap_err();
    assert_eq!(err.attempt, 1, "the first such answer fails the gate");
    assert!(err.outcome.starts_with("did not reach the app: Service draft-login-form:http"), "{}", err.outcome);
    assert!(handle.next_request().await.is_none(), "no further probe");
}

// ---------------------------------------------------------------------------------------------------
// migrate and smoke Jobs

use draftd::cluster::jobs::JobRequest;
use draftd::stand::{Failure, StandId};

fn smoke_request() -> JobRequest {
    JobRequest {
        purpose: "smoke".into(),
        run_number: 3,
        image: "registry.example.com/shop:draft-login-form-abc1234".into(),
        command: vec!["scripts/smoke_draft.sh".into()],
        env: [("STAND_URL".to_owned(), "https://draft-login-form.draft.example.com".to_owned())].into(),
        secrets: vec!["draft-login-form-db".into()],
        deadline: Duration::from_secs(600),
        keep_for: Duration::from_secs(3600),
    }
}

const JOB: &str = "/apis/batch/v1/namespaces/draft-login-form/jobs/smoke-r3";
const JOB_UID: &str = "5f1b7c2e-9a44-4d1e-8c0a-2b6f3e9d7a15";

fn job_status(conditions: Value) -> Value {
    json!({ "apiVersion": "batch/v1", "kind": "Job",
            "metadata": { "name": "smoke-r3", "namespace": "draft-login-form", "uid": JOB_UID },
            "spec": { "template": { "spec": { "containers": [] } } }, "status": { "conditions": conditions } })
}

/// A pod of the Job, as its controller makes them: the controller-uid label and owner reference.
fn job_pod(phase: &str, state: Value) -> Value {
    json!({ "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": "smoke-r3-x7k2p", "namespace": "draft-login-form",
                          "creationTimestamp": "2026-11-25T10:00:00Z",
                          "labels": { "batch.kubernetes.io/controller-uid": JOB_UID, "batch.kubernetes.io/job-name": "smoke-r3",
                                      "controller-uid": JOB_UID, "job-name": "smoke-r3" },
                          "ownerReferences": [{ "apiVersion": "batch/v1", "kind": "Job", "name": "smoke-r3", "uid": JOB_UID,
                                                "controller": true, "blockOwnerDeletion": true }] },
            "status": { "phase": phase, "containerStatuses": [container("smoke", false, 0, state, json!({}))] } })
}

/// Asserts the list of the Job's pods, selected by its UID, and answers with `pods`.
async fn expect_job_pods(handle: &mut Handle, pods: Value) {
    let listed = serve(handle, StatusCode::OK, |_| list("Pod", pods)).await;
    assert_eq!((listed.method, listed.path.as_str()), (Method::GET, "/api/v1/namespaces/draft-login-form/pods"));
    assert_eq!(
        listed.query.get("labelSelector").map(String::as_str),
        Some(format!("batch.kubernetes.io/controller-uid={JOB_UID}").as_str()),
        "by the Job's UID, never by its name"
    );
}

/// Asserts the list of the Job's events, by its UID, and answers with `events`.
async fn expect_job_events(handle: &mut Handle, events: Value) {
    let listed = serve(handle, StatusCode::OK, |_| list("Event", events)).await;
    assert_eq!((listed.method, listed.path.as_str()), (Method::GET, "/api/v1/namespaces/draft-login-form/events"));
    assert_eq!(
        listed.query.get("fieldSelector").map(String::as_str),
        Some(format!("involvedObject.uid={JOB_UID}").as_str())
    );
}

async fn expect_job_pod_and_log(handle: &mut Handle, exit_code: i32, log: &str) {
    let terminated = json!({ "terminated": { "exitCode": exit_code, "reason": if exit_code == 0 { "Completed" } else { "Error" } } });
    expect_job_pods(handle, json!([job_pod(if exit_code == 0 { "Succeeded" } else { "Failed" }, terminated)])).await;
    let (request, send) = handle.next_request().await.unwrap();
    assert_eq!(request.uri().path(), "/api/v1/namespaces/draft-login-form/pods/smoke-r3-x7k2p/log");
    let query: HashMap<String, String> =
        form_urlencoded::parse(request.uri().query().unwrap().as_bytes()).into_owned().collect();
    assert_eq!(query.get("container").map(String::as_str), Some("smoke"));
    assert_eq!(query.get("tailLines").map(String::as_str), Some("100"));
    send.send_response(Response::builder().body(Body::from(log.as_bytes().to_vec())).unwrap());
}

/// Once draftd has read the outcome: the TTL, set then by a merge patch of the one field.
async fn expect_ttl(handle: &mut Handle, answer: Value) {
    let patch = serve(handle, StatusCode::OK, |_| answer).await;
    assert_eq!((patch.method, patch.path.as_str()), (Method::PATCH, JOB));
    assert_eq!(patch.content_type.as_deref(), Some("application/merge-patch+json"));
    assert_eq!(patch.body, json!({ "spec": { "ttlSecondsAfterFinished": 3600 } }));
}

/// The Job is new: read (absent), applied and answered as the API server does, with its UID.
async fn expect_job_created(handle: &mut Handle) -> Value {
    let get = serve(handle, StatusCode::NOT_FOUND, |_| not_found("jobs.batch", "smoke-r3")).await;
    assert_eq!((get.method, get.path.as_str()), (Method::GET, JOB));
    let applied = serve(handle, StatusCode::CREATED, |seen| {
        let mut job = seen.body.clone();
        job["metadata"]["uid"] = json!(JOB_UID);
        job
    })
    .await;
    assert_eq!((applied.method, applied.path.as_str()), (Method::PATCH, JOB));
    assert_eq!(applied.query.get("fieldManager").map(String::as_str), Some("draftd"));
    assert_eq!(applied.content_type.as_deref(), Some("application/apply-patch+yaml"));
    applied.body
}

#[tokio::test]
async fn a_smoke_job_runs_once_and_brings_back_its_exit_code_and_log() {
    let (cluster, mut handle) = mock(ClusterConfig::default());
    let cluster = fast(cluster);
    let run = call(&cluster, |c| async move { c.run_job(&stand(), &smoke_request()).await });
    let job = expect_job_created(&mut handle).await;
    assert_eq!(job["kind"], "Job");
    assert_eq!(job["metadata"]["labels"]["app.kubernetes.io/managed-by"], "draftd");
    let spec = &job["spec"];
    assert_eq!(spec["backoffLimit"], 0);
    assert_eq!(spec["activeDeadlineSeconds"], 600);
    assert!(spec.get("ttlSecondsAfterFinished").is_none(), "no TTL until draftd has read the outcome: {spec}");
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["automountServiceAccountToken"], false);
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "registry.example.com/shop:draft-login-form-abc1234");
    assert_eq!(c["command"], json!(["scripts/smoke_draft.sh"]));
    assert_eq!(c["env"], json!([{ "name": "STAND_URL", "value": "https://draft-login-form.draft.example.com" }]));
    assert_eq!(c["envFrom"], json!([{ "secretRef": { "name": "draft-login-form-db", "optional": false } }]));
    assert_eq!(spec["template"]["metadata"]["labels"]["draftd.io/job"], "smoke");

    // Running: its pod is looked at while waiting.
    expect_job_pods(
        &mut handle,
        json!([job_pod("Running", json!({ "running": { "startedAt": "2026-11-25T10:00:05Z" } }))]),
    )
    .await;
    let failed = json!([{ "type": "Failed", "status": "True", "reason": "BackoffLimitExceeded" }]);
    let again = serve(&mut handle, StatusCode::OK, |_| job_status(failed.clone())).await;
    assert_eq!((again.method, again.path.as_str()), (Method::GET, JOB));
    expect_job_pod_and_log(&mut handle, 1, "login: ok\ncreate task: HTTP 500\n").await;
    expect_ttl(&mut handle, job_status(failed)).await;

    let outcome = run.await.unwrap().unwrap();
    assert!(!outcome.succeeded);
    assert_eq!(outcome.reason, "BackoffLimitExceeded");
    assert_eq!(outcome.exit_code, Some(1));
    assert_eq!(outcome.log_tail.as_deref(), Some("login: ok\ncreate task: HTTP 500\n"));
    expect_no_more(cluster, handle).await;
}

#[tokio::test]
async fn the_job_pod_meets_the_restricted_pod_security_profile() {
    let (cluster, mut handle) = mock(ClusterConfig::default());
    let run = call(&cluster, |c| async move { c.run_job(&stand(), &smoke_request()).await });
    let job = expect_job_created(&mut handle).await;
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"], json!({ "runAsNonRoot": true, "seccompProfile": { "type": "RuntimeDefault" } }));
    assert_eq!(
        pod["containers"][0]["securityContext"],
        json!({ "allowPrivilegeEscalation": false, "capabilities": { "drop": ["ALL"] }, "runAsNonRoot": true,
                "seccompProfile": { "type": "RuntimeDefault" } })
    );
    assert!(pod["containers"][0]["securityContext"].get("runAsUser").is_none(), "the image decides who it runs as");
    drop(handle);
    assert!(run.await.unwrap().is_err(), "the mock went away");
}

#[tokio::test]
async fn a_resumed_run_collects_the_job_its_earlier_attempt_started() {
    let (cluster, mut handle) = mock(ClusterConfig::default());
    let run = call(&cluster, |c| async move { c.run_job(&stand(), &smoke_request()).await });
    let complete = json!([{ "type": "Complete", "status": "True" }]);
    let found = serve(&mut handle, StatusCode::OK, |_| job_status(complete.clone())).await;
    assert_eq!((found.method, found.path.as_str()), (Method::GET, JOB));
    // No apply: the Job exists and has finished. Its pod and log are read, then its TTL set.
    expect_job_pod_and_log(&mut handle, 0, "all smoke checks passed\n").await;
    expect_ttl(&mut handle, job_status(complete)).await;
    let outcome = run.await.unwrap().unwrap();
    assert!(outcome.succeeded);
    assert_eq!((outcome.reason.as_str(), outcome.exit_code), ("Complete", Some(0)));
    expect_no_more(cluster, handle).await;
}

#[tokio::test]
async fn a_job_gone_before_its_ttl_could_be_set_still_reports_its_outcome() {
    let (cluster, mut handle) = mock(ClusterConfig::default());
    let run = call(&cluster, |c| async move { c.run_job(&stand(), &smoke_request()).await });
    let complete = json!([{ "type": "Complete", "status": "True" }]);
    serve(&mut handle, StatusCode::OK, |_| job_status(complete)).await;
    expect_job_pod_and_log(&mut handle, 0, "ok\n").await;
    let patch = serve(&mut handle, StatusCode::NOT_FOUND, |_| not_found("jobs.batch", "smoke-r3")).await;
    assert_eq!(patch.method, Method::PATCH);
    assert!(run.await.unwrap().unwrap().succeeded);
    expect_no_more(cluster, handle).await;
}

/// Asserts the Job's deletion, with background propagation so its pods go too.
async fn expect_job_deleted(handle: &mut Handle) {
    let delete = serve(handle, StatusCode::OK, |_| job_status(json!([]))).await;
    assert_eq!((delete.method, delete.path.as_str()), (Method::DELETE, JOB));
    assert_eq!(delete.body["propagationPolicy"], "Background", "{}", delete.body);
}

#[tokio::test]
async fn a_job_whose_container_config_is_refused_is_deleted_at_once_with_the_reason() {
    let (cluster, mut handle) = mock(ClusterConfig::default());
    let cluster = fast(cluster);
    let run = call(&cluster, |c| async move { c.run_job(&stand(), &smoke_request()).await });
    expect_job_created(&mut handle).await;
    // The image runs as root, which runAsNonRoot refuses: waiting 10 minutes changes nothing.
    let refused = json!({ "waiting": { "reason": "CreateContainerConfigError",
                                       "message": "container has runAsNonRoot and image will run as root (pod: \"smoke-r3-x7k2p_draft-login-form(5f1b)\", container: smoke)" } });
    expect_job_pods(&mut handle, json!([job_pod("Pending", refused)])).await;
    expect_job_deleted(&mut handle).await;
    let err = run.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, ClusterError::JobNotStarted { reason, .. } if reason == "CreateContainerConfigError"),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert_eq!(err.label(), "job_not_started");
    let text = err.to_string();
    assert!(text.contains("smoke-r3") && text.contains("runAsNonRoot and image will run as root"), "{text}");
    expect_no_more(cluster, handle).await;
}

#[tokio::test]
async fn a_job_pod_forbidden_by_admission_is_found_in_the_jobs_events_and_deleted() {
    let (cluster, mut handle) = mock(ClusterConfig::default());
    let cluster = fast(cluster);
    let run = call(&cluster, |c| async move { c.run_job(&stand(), &smoke_request()).await });
    expect_job_created(&mut handle).await;
    // No pod: the Job controller could not create it, and said so in an event on the Job.
    expect_job_pods(&mut handle, json!([])).await;
    let message = "Error creating: pods \"smoke-r3-x7k2p\" is forbidden: violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false";
    expect_job_events(
        &mut handle,
        json!([{ "apiVersion": "v1", "kind": "Event", "metadata": { "name": "smoke-r3.18a2", "namespace": "draft-login-form" },
                 "involvedObject": { "apiVersion": "batch/v1", "kind": "Job", "name": "smoke-r3", "namespace": "draft-login-form", "uid": JOB_UID },
                 "reason": "FailedCreate", "type": "Warning", "count": 3, "message": message,
                 "source": { "component": "job-controller" }, "lastTimestamp": "2026-11-25T10:00:09Z" }]),
    )
    .await;
    expect_job_deleted(&mut handle).await;
    let err = run.await.unwrap().unwrap_err();
    assert!(matches!(&err, ClusterError::JobNotStarted { reason, .. } if reason == "FailedCreate"), "{err:?}");
    assert!(err.to_string().contains("violates PodSecurity"), "{err}");
    expect_no_more(cluster, handle).await;
}

#[tokio::test]
async fn a_job_whose_image_cannot_be_pulled_is_given_up_after_a_grace_not_its_deadline() {
    let (cluster, mut handle) = mock(ClusterConfig::default());
    let cluster = fast(cluster);
    let run = call(&cluster, |c| async move { c.run_job(&stand(), &smoke_request()).await });
    expect_job_created(&mut handle).await;
    let backoff = job_pod(
        "Pending",
        json!({ "waiting": { "reason": "ImagePullBackOff",
                             "message": "Back-off pulling image \"registry.example.com/shop:draft-login-form-abc1234\"" } }),
    );
    // The pull keeps failing: the Job is read and its pod listed each poll until the grace is over.
    let responder = tokio::spawn(async move {
        let mut pod_lists = 0;
        loop {
            let (request, send) = handle.next_request().await.expect("the Job is deleted in the end");
            let (method, path) = (request.method().clone(), request.uri().path().to_owned());
            let body = match (&method, path.as_str()) {
                (&Method::GET, "/api/v1/namespaces/draft-login-form/pods") => {
                    pod_lists += 1;
                    list("Pod", json!([backoff.clone()]))
                }
                (&Method::GET, JOB) => job_status(json!([])),
                (&Method::DELETE, JOB) => {
                    let bytes = request.into_body().collect().await.unwrap().to_bytes();
                    let body: Value = serde_json::from_slice(&bytes).unwrap();
                    assert_eq!(body["propagationPolicy"], "Background", "{body}");
                    send.send_response(
                        Response::builder()
                            .body(Body::from(serde_json::to_vec(&job_status(json!([]))).unwrap()))
                            .unwrap(),
                    );
                    return (pod_lists, handle);
                }
                other => panic!("unexpected request {other:?}"),
            };
            send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap());
        }
    });
    let err = run.await.unwrap().unwrap_err();
    let (pod_lists, handle) = responder.await.unwrap();
    assert!(pod_lists >= 2, "a failing pull gets a grace: {pod_lists} looks");
    assert!(matches!(&err, ClusterError::JobNotStarted { reason, .. } if reason == "ImagePullBackOff"), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("Back-off pulling image") && text.contains("smoke-r3-x7k2p"), "{text}");
    expect_no_more(cluster, handle).await;
}

#[tokio::test]
async fn a_job_past_its_deadline_says_what_its_pod_was_doing() {
    let (cluster, mut handle) = mock(ClusterConfig::default());
    let cluster = fast(cluster);
    let run = call(&cluster, |c| async move { c.run_job(&stand(), &smoke_request()).await });
    serve(&mut handle, StatusCode::OK, |_| job_status(json!([]))).await;
    expect_job_pods(
        &mut handle,
        json!([job_pod("Running", json!({ "running": { "startedAt": "2026-11-25T10:00:05Z" } }))]),
    )
    .await;
    let deadline = json!([{ "type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                            "message": "Job was active longer than specified deadline" }]);
    serve(&mut handle, StatusCode::OK, |_| job_status(deadline.clone())).await;
    // The Job controller has deleted the pod by now: what it was doing is what draftd saw last.
    expect_job_pods(&mut handle, json!([])).await;
    expect_ttl(&mut handle, job_status(deadline)).await;
    let outcome = run.await.unwrap().unwrap();
    assert!(!outcome.succeeded);
    assert_eq!(
        outcome.reason,
        "DeadlineExceeded: pod smoke-r3-x7k2p (Running): smoke running since 2026-11-25T10:00:05Z"
    );
    assert_eq!((outcome.exit_code, outcome.log_tail), (None, None));
    expect_no_more(cluster, handle).await;
}

#[tokio::test]
async fn a_job_past_its_deadline_without_a_pod_quotes_the_jobs_events() {
    let (cluster, mut handle) = mock(ClusterConfig::default());
    let run = call(&cluster, |c| async move { c.run_job(&stand(), &smoke_request()).await });
    let deadline = json!([{ "type": "Failed", "status": "True", "reason": "DeadlineExceeded" }]);
    serve(&mut handle, StatusCode::OK, |_| job_status(deadline.clone())).await;
    expect_job_pods(&mut handle, json!([])).await;
    let message = "Error creating: pods \"smoke-r3-x7k2p\" is forbidden: exceeded quota: draftd-quota, requested: requests.memory=512Mi, used: requests.memory=4Gi, limited: requests.memory=4Gi";
    expect_job_events(
        &mut handle,
        json!([{ "apiVersion": "v1", "kind": "Event", "metadata": { "name": "smoke-r3.18a2", "namespace": "draft-login-form" },
                 "involvedObject": { "kind": "Job", "name": "smoke-r3", "uid": JOB_UID },
                 "reason": "FailedCreate", "type": "Warning", "message": message }]),
    )
    .await;
    expect_ttl(&mut handle, job_status(deadline)).await;
    let outcome = run.await.unwrap().unwrap();
    assert_eq!(outcome.reason, format!("DeadlineExceeded: no pod was created: FailedCreate: {message}"));
    expect_no_more(cluster, handle).await;
}

// ---------------------------------------------------------------------------------------------------
// secrets

fn credentials(password: &str) -> std::collections::BTreeMap<String, secrecy::SecretString> {
    [
        ("DATABASE_USER".to_owned(), secrecy::SecretString::from("draft_login_form")),
        ("DATABASE_PASSWORD".to_owned(), secrecy::SecretString::from(password)),
    ]
    .into()
}

#[tokio::test]
async fn rotated_credentials_update_the_secret_and_roll_only_deployments_with_an_old_checksum() {
    use base64::Engine;
    let (cluster, mut handle) = mock(ClusterConfig::default());
    let work = call(&cluster, |c| async move {
        let old = c.apply_secret(&stand(), "draft-login-form-db", &credentials("p-1")).await?;
        let new = c.apply_secret(&stand(), "draft-login-form-db", &credentials("p-2")).await?;
        let rolled = c.roll_on_secrets("draft-login-form", "draft-login-form", &new).await?;
        Ok::<_, ClusterError>((old, new, rolled))
    });
    let path = "/api/v1/namespaces/draft-login-form/secrets/draft-login-form-db";
    let first = expect_apply(&mut handle, path, "Secret").await;
    assert_eq!(first["type"], "Opaque");
    let decode = |v: &Value| {
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap()).unwrap()
    };
    assert_eq!(decode(&first["data"]["DATABASE_PASSWORD"]), "p-1");
    let second = expect_apply(&mut handle, path, "Secret").await;
    assert_eq!(decode(&second["data"]["DATABASE_PASSWORD"]), "p-2");

    // Two Deployments: one still on the old checksum, one (a mock) already on the new one.
    let listed = serve(&mut handle, StatusCode::OK, |_| {
        let with = |name: &str, checksum: &str| {
            let mut d = deployment(name, 1, json!({}));
            d["spec"]["template"]["metadata"]["annotations"] = json!({ "draftd.io/secrets-checksum": checksum });
            d
        };
        let new = draftd::cluster::resources::secrets_checksum(&credentials("p-2"));
        let old = draftd::cluster::resources::secrets_checksum(&credentials("p-1"));
        list("Deployment", json!([with("app", &old), with("mock-payments", &new)]))
    })
    .await;
    assert_eq!(
        listed.query.get("labelSelector").map(String::as_str),
        Some("app.kubernetes.io/instance=draft-login-form")
    );
    let patch = serve(&mut handle, StatusCode::OK, |_| deployment("app", 2, json!({}))).await;
    assert_eq!(
        (patch.method, patch.path.as_str()),
        (Method::PATCH, "/apis/apps/v1/namespaces/draft-login-form/deployments/app")
    );
    assert_eq!(patch.content_type.as_deref(), Some("application/merge-patch+json"));

    let (old, new, rolled) = work.await.unwrap().unwrap();
    assert_ne!(old, new, "a rotated password changes the checksum");
    assert_eq!(
        patch.body,
        json!({ "spec": { "template": { "metadata": { "annotations": { "draftd.io/secrets-checksum": new } } } } })
    );
    assert_eq!(rolled, ["Deployment/app"]);
    expect_no_more(cluster, handle).await;
}

/// A writer for a tracing subscriber that keeps everything written, to search it afterwards.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn secret_values_never_reach_the_logs_even_at_trace_level() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber =
        tracing_subscriber::fmt().with_max_level(tracing::Level::TRACE).with_writer(move || writer.clone()).finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let (cluster, mut handle) = mock(ClusterConfig::default());
    let password = "p-9f2c7e41-never-logged";
    // The task may run on another thread: it takes the capturing subscriber along.
    let dispatch = tracing::dispatcher::get_default(|d| d.clone());
    let work = call(&cluster, move |c| async move {
        let _guard = tracing::dispatcher::set_default(&dispatch);
        c.apply_secret(&stand(), "draft-login-form-db", &credentials(password)).await
    });
    let applied =
        expect_apply(&mut handle, "/api/v1/namespaces/draft-login-form/secrets/draft-login-form-db", "Secret").await;
    work.await.unwrap().unwrap();
    assert!(applied["data"]["DATABASE_PASSWORD"].is_string(), "the value did reach the API server");
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(!logs.is_empty(), "the trace-level subscriber saw the request");
    assert!(!logs.contains(password), "{logs}");
    use base64::Engine;
    assert!(!logs.contains(&base64::engine::general_purpose::STANDARD.encode(password)), "{logs}");
    expect_no_more(cluster, handle).await;
}
