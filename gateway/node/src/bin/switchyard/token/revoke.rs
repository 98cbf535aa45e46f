//! `switchyard token revoke`: asks a gateway's control listener to revoke a public token id or
//! subject (`POST /v1/revocations`), which stores it in Redis for every gateway.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The longest the command waits for the gateway.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read.
const ANSWER_BYTES_MAX: usize = 64 * 1024;

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["jti", "subject"])))]
pub struct RevokeArgs {
    /// The gateway's control listener, `http://host:port`.
    #[arg(long)]
    gateway: String,
    /// A control credential for every service (`--services '*'`).
    #[arg(long, env = "SWITCHYARD_TOKEN", hide_env_values = true)]
    token: String,
    /// The `iss` of the tokens to revoke.
    #[arg(long)]
    issuer: String,
    /// A token id (`jti`) to revoke; needs --expires-at.
    #[arg(long)]
    jti: Option<String>,
    /// A subject (`sub`) whose tokens issued until now are revoked.
    #[arg(long)]
    subject: Option<String>,
    /// Unix seconds: the token's `exp` (required with --jti); for a subject, by default the
    /// gateway's `revocation.token_lifetime_max_s` from now.
    #[arg(long)]
    expires_at: Option<u64>,
}

pub fn run(args: &RevokeArgs) -> anyhow::Result<()> {
    let base = args.gateway.trim_end_matches('/');
    if !base.starts_with("http://") {
        anyhow::bail!(
            "--gateway must be http://host:port (for a control listener with TLS, POST /v1/revocations with curl)"
        );
    }
    if args.jti.is_some() && args.expires_at.is_none() {
        anyhow::bail!("--jti needs --expires-at: the token's exp, in Unix seconds");
    }
    let body = serde_json::json!({
        "issuer": args.issuer,
        "token_id": args.jti,
        "subject": args.subject,
        "expires_at": args.expires_at,
    });
    let request = http::Request::post(format!("{base}/v1/revocations"))
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", args.token),
        )
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&body)?)))
        .context("--gateway is not a usable URL")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, text) = runtime.block_on(async {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let answer = tokio::time::timeout(TIMEOUT, async {
            let response = client.request(request).await?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), ANSWER_BYTES_MAX)
                .collect()
                .await
                .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
                .to_bytes();
            anyhow::Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
        })
        .await
        .map_err(|_| anyhow::anyhow!("the gateway did not answer within {TIMEOUT:?}"))?;
        answer.with_context(|| format!("POST {base}/v1/revocations"))
    })?;
    println!("{text}");
    if !status.is_success() {
        anyhow::bail!("the gateway answered {status}");
    }
    Ok(())
}
