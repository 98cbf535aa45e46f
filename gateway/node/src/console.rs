//! The web console, at `/console/` on the control listener: a page and its script and
//! stylesheet, built from `gateway/console/` and embedded in the binary, so a gateway serves
//! it with nothing beside it (see `docs/decisions/0022-the-console-embedded.md`).
//!
//! The files carry no secret: every call the page makes (registry views, `/metrics`,
//! `/graphql`) needs the control credential, which the person pastes into the page. So the
//! files themselves are served without one, like the probes. Every answer under `/console`
//! carries a Content-Security-Policy that allows the page's own script and style only (no
//! inline script, no other origin, no framing), `X-Content-Type-Options: nosniff` and
//! `Referrer-Policy: no-referrer`; the files have fixed names, so they are revalidated by
//! their `ETag` rather than cached for good.

use axum::Router;
use axum::response::Response;
use axum::routing::get;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use sha2::{Digest, Sha256};

/// Where the console is served.
pub const CONSOLE_PATH: &str = "/console/";

/// What the page may load and where it may connect: itself only. `connect-src 'self'`
/// covers the WebSocket to the same host and port.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Fixed names: the browser asks again each time and gets 304 while the `ETag` matches.
const CACHE_CONTROL: &str = "no-cache";

/// One embedded file.
struct Asset {
    /// The path below `/console/`; `""` is the page.
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

/// The console as `npm run build` leaves it in `gateway/console/dist/` (committed; a test
/// rebuilds it and compares).
const ASSETS: &[Asset] = &[
    Asset {
        path: "",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../console/dist/index.html"),
    },
    Asset {
        path: "assets/console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../console/dist/assets/console.js"),
    },
    Asset {
        path: "assets/console.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../console/dist/assets/console.css"),
    },
];

/// An embedded file with its validator, computed once when the router is built.
#[derive(Clone)]
struct Served {
    content_type: &'static str,
    body: &'static [u8],
    etag: HeaderValue,
}

/// A strong validator: the first 16 bytes of the body's SHA-256, in hex and quoted.
fn etag(body: &[u8]) -> HeaderValue {
    let digest = Sha256::digest(body);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    HeaderValue::from_str(&format!("\"{hex}\"")).unwrap_or(HeaderValue::from_static("\"\""))
}

/// The console's routes: `GET` (and `HEAD`) of `/console/` and its files; `/console`
/// redirects to `/console/` so that the page's relative links resolve.
pub fn router() -> Router {
    let mut router = Router::new().route("/console", get(redirect));
    for asset in ASSETS {
        let served = Served {
            content_type: asset.content_type,
            body: asset.body,
            etag: etag(asset.body),
        };
        let path = format!("{CONSOLE_PATH}{}", asset.path);
        router = router.route(
            &path,
            get(move |headers: HeaderMap| async move { serve(&served, &headers) }),
        );
    }
    router.route("/console/{*rest}", get(not_found))
}

/// The headers every answer under `/console` carries.
fn secured(mut builder: http::response::Builder) -> http::response::Builder {
    if let Some(headers) = builder.headers_mut() {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        // For browsers older than `frame-ancestors`.
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            "cross-origin-opener-policy",
            HeaderValue::from_static("same-origin"),
        );
        headers.insert(
            "cross-origin-resource-policy",
            HeaderValue::from_static("same-origin"),
        );
    }
    builder
}

/// Whether `If-None-Match` names this validator (or `*`).
fn not_modified(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let Ok(etag) = etag.to_str() else {
        return false;
    };
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*")
}

fn serve(served: &Served, headers: &HeaderMap) -> Response {
    let builder = secured(Response::builder())
        .header(header::ETAG, served.etag.clone())
        .header(header::CACHE_CONTROL, CACHE_CONTROL);
    let response = if not_modified(headers, &served.etag) {
        builder
            .status(StatusCode::NOT_MODIFIED)
            .body(axum::body::Body::empty())
    } else {
        builder
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, served.content_type)
            .body(axum::body::Body::from(served.body))
    };
    response.unwrap_or_default()
}

async fn redirect() -> Response {
    secured(Response::builder())
        .status(StatusCode::PERMANENT_REDIRECT)
        .header(header::LOCATION, CONSOLE_PATH)
        .body(axum::body::Body::empty())
        .unwrap_or_default()
}

async fn not_found() -> Response {
    secured(Response::builder())
        .status(StatusCode::NOT_FOUND)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CACHE_CONTROL, CACHE_CONTROL)
        .body(axum::body::Body::from(
            "no such file of the console; open /console/\n",
        ))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_file_is_there_and_the_page_loads_no_inline_script() {
        for asset in ASSETS {
            assert!(!asset.body.is_empty(), "{} is empty", asset.path);
        }
        let page = std::str::from_utf8(ASSETS[0].body).unwrap_or_default();
        // Every <script> names its source; the policy would refuse an inline one.
        for script in page.split("<script").skip(1) {
            let tag = script.split('>').next().unwrap_or_default();
            assert!(tag.contains("src="), "inline script in index.html: {tag}");
        }
        for asset in &ASSETS[1..] {
            assert!(
                page.contains(&format!("./{}", asset.path)),
                "index.html does not load {}",
                asset.path
            );
        }
    }

    #[test]
    fn if_none_match_is_read_as_a_list_of_validators() {
        let tag = etag(b"x");
        let mut headers = HeaderMap::new();
        assert!(!not_modified(&headers, &tag));
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert!(!not_modified(&headers, &tag));
        let list = format!("\"other\", W/{}", tag.to_str().unwrap_or_default());
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&list).unwrap_or(HeaderValue::from_static("")),
        );
        assert!(not_modified(&headers, &tag));
    }
}
