//! `POST /v1/revocations` (revoke a public token id or subject; an operator's credential) and
//! `GET /v1/revocations` (this gateway's copy, a page at a time; a `read` credential).

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use switchyard_core::GatewayError;

use super::{Control, Peer, Reader, ok_json, peer, peer_certificate};
use crate::respond::{detailed_error_response, json_response, read_body};
use crate::revocations::{Position, Record, Revocations, RevokeRequest};
use crate::seams::ClientAddr;

/// Largest revocation request body accepted.
const REVOKE_BODY_BYTES_MAX: usize = 4 * 1024;

fn no_store() -> GatewayError {
    GatewayError::NotReady {
        detail: "this gateway keeps no revocations: redis.url is empty".to_owned(),
    }
}

fn revocations(control: &Control) -> Result<&Arc<Revocations>, GatewayError> {
    control.revocations.as_ref().ok_or_else(no_store)
}

fn record_json(record: &Record) -> serde_json::Value {
    serde_json::to_value(record).unwrap_or_default()
}

pub(super) async fn revoke(
    State(control): State<Arc<Control>>,
    client: Option<Extension<ConnectInfo<ClientAddr>>>,
    certificate: Peer,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let client = peer(client);
    let result = async {
        let identity = control.registrar.authorize_revocation(
            &headers,
            peer_certificate(certificate).as_deref(),
            client,
        )?;
        let revocations = revocations(&control)?;
        let bytes = read_body(body, REVOKE_BODY_BYTES_MAX).await?;
        let request: RevokeRequest =
            serde_json::from_slice(&bytes).map_err(|e| GatewayError::InvalidArgument {
                field: "body",
                reason: format!(
                    "expected JSON {{\"issuer\": .., \"token_id\": .. | \"subject\": .., \"expires_at\": unix_s}}: {e}"
                ),
            })?;
        let revoked = revocations.revoke(request).await?;
        tracing::info!(subject = %identity.subject, credential = %identity.credential_id, client = ?client, "revocation made through the control listener");
        let mut body = record_json(&revoked.record);
        body["published"] = revoked.published.into();
        Ok::<_, GatewayError>(json_response(
            StatusCode::OK,
            serde_json::to_vec(&body).unwrap_or_default(),
        ))
    }
    .await;
    result.unwrap_or_else(|error| detailed_error_response(&error, None))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

pub(super) async fn list(
    State(control): State<Arc<Control>>,
    _: Reader,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let result = (|| {
        let revocations = revocations(&control)?;
        let Query(query) = query.map_err(|e| GatewayError::InvalidArgument {
            field: "query",
            reason: format!("expected ?after=CURSOR&limit=N: {e}"),
        })?;
        let after = match &query.after {
            None => None,
            Some(text) => {
                Some(
                    Position::decode(text).ok_or_else(|| GatewayError::InvalidArgument {
                        field: "after",
                        reason: "not a cursor this gateway gave".to_owned(),
                    })?,
                )
            }
        };
        let limit = query.limit.unwrap_or(revocations.list_max());
        let (records, next) = revocations.list(after.as_ref(), limit);
        let records: Vec<_> = records.iter().map(record_json).collect();
        Ok::<_, GatewayError>(ok_json(&serde_json::json!({
            "revocations": records,
            "next": next.map(|p| p.encode()),
            "held": revocations.held(),
            "current": revocations.is_current(),
            "copy_age_ms": revocations.copy_age().map(|a| a.as_millis() as u64),
        })))
    })();
    result.unwrap_or_else(|error| detailed_error_response(&error, None))
}
