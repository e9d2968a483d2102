//! The API's one table of endpoints: the router is built from it, and so is the OpenAPI 3.1
//! document (`GET /api/v1/openapi.json`, checked in as `docs/openapi.json`), with the
//! request bodies' and queries' JSON Schemas derived from the structs the handlers parse.

use axum::routing::{MethodRouter, delete, get, patch, post, put};
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value, json};

use super::*;

/// What a request carries.
#[derive(Clone, Copy)]
pub(super) enum Input {
    /// Nothing.
    None,
    /// A JSON body of this schema.
    Json(fn(&mut SchemaGenerator) -> schemars::Schema),
    /// A JSON body: an `outpost-policy` policy document.
    Policy,
    /// The file itself (`application/octet-stream`, streamed).
    File,
}

/// One endpoint.
pub(super) struct Endpoint {
    pub(super) method: &'static str,
    pub(super) path: &'static str,
    pub(super) summary: &'static str,
    pub(super) input: Input,
    /// The query's parameters (the struct a handler parses).
    pub(super) query: Option<fn(&mut SchemaGenerator) -> schemars::Schema>,
    /// The status of success.
    pub(super) ok: u16,
    /// Whether it needs a session or API token.
    pub(super) auth: bool,
    pub(super) handler: fn() -> MethodRouter<Arc<ApiState>>,
}

fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> schemars::Schema {
    g.subschema_for::<T>()
}

fn inline<T: JsonSchema>(g: &mut SchemaGenerator) -> schemars::Schema {
    T::json_schema(g)
}

macro_rules! ep {
    ($method:ident $path:literal, $summary:literal, $input:expr, $query:expr, $ok:literal, $auth:literal, $handler:ident) => {
        Endpoint {
            method: stringify!($method),
            path: $path,
            summary: $summary,
            input: $input,
            query: $query,
            ok: $ok,
            auth: $auth,
            handler: || $method($handler),
        }
    };
}

/// Every endpoint of the API.
pub(super) fn endpoints() -> Vec<Endpoint> {
    use Input::{File, Json, None as Nothing, Policy};
    vec![
        ep!(post "/api/v1/login", "Open a session", Json(schema::<Login>), None, 200, false, login),
        ep!(post "/api/v1/logout", "Close the session", Nothing, None, 204, true, logout),
        ep!(get "/api/v1/status", "Server status", Nothing, None, 200, true, status),
        ep!(get "/metrics", "Counters in Prometheus' text format", Nothing, None, 200, true, metrics),
        ep!(get "/api/v1/openapi.json", "This document", Nothing, None, 200, false, openapi_document),
        ep!(get "/api/v1/accounts", "List accounts", Nothing, None, 200, true, list_accounts),
        ep!(post "/api/v1/accounts", "Create an account", Json(schema::<NewAccount>), None, 201, true, create_account),
        ep!(patch "/api/v1/accounts/{name}", "Change an account's role, password or disabled state", Json(schema::<AccountChange>), None, 200, true, change_account),
        ep!(get "/api/v1/api-tokens", "List API tokens", Nothing, None, 200, true, list_api_tokens),
        ep!(post "/api/v1/api-tokens", "Issue an API token (its secret shown once)", Json(schema::<NewApiToken>), None, 201, true, issue_api_token),
        ep!(delete "/api/v1/api-tokens/{id}", "Revoke an API token", Nothing, None, 204, true, revoke_api_token),
        ep!(get "/api/v1/virtual-servers", "List virtual servers (main server accounts)", Nothing, None, 200, true, list_virtual_servers),
        ep!(post "/api/v1/virtual-servers", "Create a virtual server", Json(schema::<NewVirtualServer>), None, 201, true, create_virtual_server),
        ep!(get "/api/v1/virtual-servers/{id}", "A virtual server", Nothing, None, 200, true, get_virtual_server),
        ep!(patch "/api/v1/virtual-servers/{id}", "Rename, disable or enable a virtual server", Json(schema::<VirtualServerChange>), None, 200, true, change_virtual_server),
        ep!(delete "/api/v1/virtual-servers/{id}", "Delete a virtual server: its devices' certificates revoked, its data removed", Nothing, None, 200, true, delete_virtual_server),
        ep!(get "/api/v1/groups", "The group tree", Nothing, None, 200, true, list_groups),
        ep!(post "/api/v1/groups", "Create a group", Json(schema::<NewGroup>), None, 201, true, create_group),
        ep!(patch "/api/v1/groups/{id}", "Rename a group, or move it with its subgroups and devices", Json(schema::<GroupChange>), None, 200, true, change_group),
        ep!(delete "/api/v1/groups/{id}", "Remove an empty group", Nothing, None, 204, true, remove_group),
        ep!(get "/api/v1/devices", "List devices, page by page, filtered", Nothing, Some(inline::<DevicePage>), 200, true, list_devices),
        ep!(get "/api/v1/devices/{id}", "A device's details", Nothing, None, 200, true, device_details),
        ep!(patch "/api/v1/devices/{id}", "Set a device's tags", Json(schema::<DeviceChange>), None, 200, true, change_device),
        ep!(delete "/api/v1/devices/{id}", "Remove a device and revoke its certificate", Nothing, None, 204, true, remove_device),
        ep!(post "/api/v1/devices/{id}/move", "Move a device to a group", Json(schema::<MoveTo>), None, 200, true, move_device),
        ep!(get "/api/v1/devices/{id}/settings", "A device's effective settings", Nothing, None, 200, true, device_settings),
        ep!(get "/api/v1/devices/{id}/settings/explain", "Where each of a device's effective values came from, and what lost", Nothing, Some(inline::<ExplainQuery>), 200, true, explain_settings),
        ep!(get "/api/v1/enrollment-tokens", "Pending enrollment tokens", Nothing, None, 200, true, list_enrollment_tokens),
        ep!(post "/api/v1/enrollment-tokens", "Issue an enrollment token", Json(schema::<NewEnrollmentToken>), None, 201, true, issue_enrollment_token),
        ep!(delete "/api/v1/enrollment-tokens/{id}", "Revoke an enrollment token", Nothing, None, 204, true, revoke_enrollment_token),
        ep!(get "/api/v1/policies", "List policies", Nothing, None, 200, true, list_policies),
        ep!(get "/api/v1/policies/{id}", "A policy document", Nothing, None, 200, true, get_policy),
        ep!(put "/api/v1/policies/{id}", "Create or replace a policy", Policy, None, 200, true, put_policy),
        ep!(delete "/api/v1/policies/{id}", "Remove a policy", Nothing, None, 200, true, delete_policy),
        ep!(post "/api/v1/policies/{id}/status", "Set a policy's status (activating one makes the group's previous one inactive)", Json(schema::<StatusChange>), None, 200, true, set_policy_status),
        ep!(get "/api/v1/distribution-points", "The report of distribution points", Nothing, None, 200, true, dp_report),
        ep!(post "/api/v1/distribution-points", "Make a device a distribution point of a group, a network location or its broadcast domain", Json(schema::<DpScope>), None, 201, true, assign_dp),
        ep!(delete "/api/v1/distribution-points/{device}/{scope}", "Remove a distribution point from a scope (a group id, location~NAME or broadcast-domain~own)", Nothing, None, 204, true, unassign_dp),
        ep!(post "/api/v1/distribution-points/{device}/{scope}/activate", "Make a distribution point active now", Nothing, None, 200, true, activate_dp),
        ep!(get "/api/v1/gateways", "Gateways and their status", Nothing, None, 200, true, list_gateways),
        ep!(post "/api/v1/gateways", "Register a gateway", Json(schema::<NewGateway>), None, 201, true, register_gateway),
        ep!(delete "/api/v1/gateways/{id}", "Unregister a gateway", Nothing, None, 204, true, unregister_gateway),
        ep!(get "/api/v1/updates", "Update objects, with how many devices hold them", Nothing, None, 200, true, list_updates),
        ep!(put "/api/v1/updates/{id}", "Upload an update object", File, Some(inline::<UploadQuery>), 201, true, upload_update),
        ep!(post "/api/v1/updates/{id}/import", "Publish a file from the import directory", Json(schema::<ImportRequest>), None, 201, true, import_update),
        ep!(get "/api/v1/events", "The event log", Nothing, Some(inline::<EventPage>), 200, true, list_events),
        ep!(get "/api/v1/security-issues", "Open security issues", Nothing, Some(inline::<IssueQuery>), 200, true, list_issues),
        ep!(post "/api/v1/security-issues/{device}/{kind}/acknowledge", "Acknowledge a security issue", Nothing, None, 200, true, acknowledge_issue),
    ]
}

/// The router of every endpoint.
pub(super) fn routes() -> Router<Arc<ApiState>> {
    endpoints()
        .into_iter()
        .fold(Router::new(), |r, e| r.route(e.path, (e.handler)()))
}

/// The OpenAPI 3.1 document of the API.
pub fn openapi() -> Value {
    let mut g = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator();
    let mut paths = Map::new();
    for e in endpoints() {
        let mut params: Vec<Value> = e
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| {
                json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
            })
            .collect();
        if let Some(q) = e.query {
            let s = q(&mut g).to_value();
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                let required: Vec<&str> = s
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                for (name, schema) in props {
                    let mut p = json!({
                        "name": name, "in": "query",
                        "required": required.contains(&name.as_str()),
                        "schema": schema,
                    });
                    if let Some(d) = schema.get("description") {
                        p["description"] = d.clone();
                    }
                    params.push(p);
                }
            }
        }
        if (e.auth || e.path == "/api/v1/login") && !e.path.starts_with("/api/v1/virtual-servers") {
            params.push(json!({
                "name": "Outpost-Virtual-Server", "in": "header", "required": false,
                "description": "The virtual server the request is about (the main server without it; \
                                a virtual server's own accounts may name only their own)",
                "schema": {"type": "string"},
            }));
        }
        let mut op = json!({
            "operationId": format!("{} {}", e.method, e.path),
            "summary": e.summary,
            "responses": {
                e.ok.to_string(): {"description": "done"},
                "4XX": {"$ref": "#/components/responses/Problem"},
                "5XX": {"$ref": "#/components/responses/Problem"},
            },
        });
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        let body = match e.input {
            Input::None => None,
            Input::Json(f) => Some(json!({"application/json": {"schema": f(&mut g).to_value()}})),
            Input::Policy => Some(json!({"application/json": {"schema": {
                "type": "object",
                "description": "An outpost-policy policy document: id, app, group, status, settings (each a value and whether it is locked), profiles."
            }}})),
            Input::File => Some(json!({"application/octet-stream": {"schema": {
                "type": "string", "contentMediaType": "application/octet-stream"
            }}})),
        };
        if let Some(content) = body {
            op["requestBody"] = json!({"required": true, "content": content});
        }
        if !e.auth {
            op["security"] = json!([]);
        }
        let item = paths
            .entry(e.path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        item[e.method] = op;
    }
    let mut schemas = g.take_definitions(true);
    schemas.insert(
        "Problem".into(),
        json!({
            "type": "object",
            "description": "An RFC 9457 problem document.",
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "field": {"type": "string", "description": "The request field at fault."}
            },
            "required": ["type", "title", "status", "detail"]
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "outpost administration API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The running Administration Server, administered over HTTPS: JSON bodies (at most 64 KiB, unknown fields refused), bearer tokens from /api/v1/login or API tokens, RFC 9457 problems naming the field at fault."
        },
        "servers": [{"url": format!("https://localhost:{DEFAULT_API_PORT}")}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
            "responses": {"Problem": {
                "description": "Refused or failed; the detail says why.",
                "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
            }}
        }
    })
}

/// `GET /api/v1/openapi.json`.
pub(super) async fn openapi_document() -> Response {
    json(StatusCode::OK, &openapi())
}
