//! What each HTTP path answers (see the endpoint list in `main.rs`), the API objects read
//! from `--api-dir`, and the small response builders. Owns the answers; the connection and
//! the streamed bodies are `conn`'s and `bodies`'.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::bodies::{json_str, PatternBody, SlowBody, WatchBody};
use crate::{BoxError, ConnInfo, RespBody, Shared, MAX_WATCH_INTERVAL_MS};

pub(crate) fn route(req: Request<Incoming>, shared: &Shared, info: ConnInfo) -> Response<RespBody> {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    match path {
        "/readyz" => {
            shared
                .last_readyz_client
                .store(info.client_fp, Ordering::Relaxed);
            if shared.terminating.load(Ordering::Relaxed) {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "[-]shutdown failed: reason withheld\nreadyz check failed",
                );
            }
            let status = StatusCode::from_u16(shared.readyz.load(Ordering::Relaxed))
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = if status.is_success() {
                "ok"
            } else {
                "readyz check failed"
            };
            let mut resp = text(status, body);
            let pad = shared.readyz_pad.load(Ordering::Relaxed);
            if pad > 0 {
                if let Ok(v) = header::HeaderValue::from_str(&"p".repeat(pad)) {
                    resp.headers_mut().insert("x-padding", v);
                }
            }
            resp
        }
        "/healthz" | "/livez" => text(StatusCode::OK, "ok"),
        "/-/readyz" => {
            if req.method() != Method::PUT && req.method() != Method::POST {
                return text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "use PUT /-/readyz?status=N\n",
                );
            }
            match query_param(query, "status").and_then(|s| s.parse::<u16>().ok()) {
                Some(code @ 100..=599) => {
                    shared.readyz.store(code, Ordering::Relaxed);
                    let pad = query_param(query, "header_bytes").and_then(|s| s.parse().ok());
                    shared.readyz_pad.store(pad.unwrap_or(0), Ordering::Relaxed);
                    text(StatusCode::OK, format!("readyz now answers {code}\n"))
                }
                _ => text(
                    StatusCode::BAD_REQUEST,
                    "status must be an integer in 100..=599\n",
                ),
            }
        }
        "/-/goaway" => {
            if req.method() != Method::PUT && req.method() != Method::POST {
                return text(StatusCode::METHOD_NOT_ALLOWED, "use PUT /-/goaway\n");
            }
            if let Ok(mut t) = shared.goaway.lock() {
                std::mem::take(&mut *t).cancel();
            }
            text(StatusCode::OK, "GOAWAY sent on every HTTP/2 connection\n")
        }
        "/whoami" => {
            let alpn = info.alpn.unwrap_or(if req.version() == Version::HTTP_2 {
                "h2"
            } else {
                "http/1.1"
            });
            // Built by hand to keep the documented key order.
            let body = format!(
                "{{\"server\":{},\"client_cert\":{},\"alpn\":\"{alpn}\",\"client_fp\":{}}}\n",
                json_str(&shared.name),
                info.client_cert,
                info.client_fp,
            );
            json(body)
        }
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes" => {
            api_object(shared, "endpointslice.json", &req, info)
        }
        "/api/v1/namespaces/default/endpoints/kubernetes" => {
            api_object(shared, "endpoints.json", &req, info)
        }
        "/-/last-readyz-client" => json(format!(
            "{{\"client_fp\":{}}}\n",
            shared.last_readyz_client.load(Ordering::Relaxed)
        )),
        "/-/last-api-client" => json(
            shared
                .last_api_client
                .lock()
                .map(|s| s.clone())
                .unwrap_or_default(),
        ),
        "/echo" => {
            let mut resp = Response::new(req.into_body().map_err(BoxError::from).boxed());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/octet-stream"),
            );
            resp
        }
        "/bytes" => match query_param(query, "n").and_then(|s| s.parse::<u64>().ok()) {
            Some(n) => octets(PatternBody::new(n).boxed(), n),
            None => text(
                StatusCode::BAD_REQUEST,
                "n must be a non-negative integer\n",
            ),
        },
        "/watch" => {
            let interval_ms = match query_param(query, "interval_ms") {
                None => 100,
                Some(s) => match s.parse::<u64>() {
                    Ok(ms @ 1..=MAX_WATCH_INTERVAL_MS) => ms,
                    _ => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            "interval_ms must be an integer in 1..=3600000\n",
                        )
                    }
                },
            };
            let body = WatchBody::new(
                shared.name.clone(),
                Duration::from_millis(interval_ms),
                shared.shutdown.clone(),
            );
            let mut resp = Response::new(body.boxed());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            resp
        }
        "/slow" => {
            let n = query_param(query, "n").and_then(|s| s.parse::<u64>().ok());
            let ms = query_param(query, "ms").and_then(|s| s.parse::<u64>().ok());
            match (n, ms) {
                (Some(n), Some(ms @ 0..=MAX_WATCH_INTERVAL_MS)) => {
                    octets(SlowBody::new(n, Duration::from_millis(ms)).boxed(), n)
                }
                _ => text(
                    StatusCode::BAD_REQUEST,
                    "n must be a non-negative integer, ms an integer in 0..=3600000\n",
                ),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "404 page not found\n"),
    }
}

/// First value of `key` in a `a=1&b=2` query string (no percent-decoding needed here).
fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find_map(|(k, v)| (k == key).then_some(v))
}

fn full(body: impl Into<Bytes>) -> RespBody {
    Full::new(body.into()).map_err(|e| match e {}).boxed()
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<RespBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A binary answer of `len` bytes.
fn octets(body: RespBody, len: u64) -> Response<RespBody> {
    let mut resp = Response::new(body);
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
    resp
}

fn json(body: String) -> Response<RespBody> {
    let mut resp = Response::new(full(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Serves an API object from the `--api-dir` file, as the apiserver would.
fn api_object(
    shared: &Shared,
    file: &str,
    req: &Request<Incoming>,
    info: ConnInfo,
) -> Response<RespBody> {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Ok(mut last) = shared.last_api_client.lock() {
        *last = format!(
            "{{\"client_fp\":{},\"authorization\":{}}}\n",
            info.client_fp,
            json_str(auth)
        );
    }
    let Some(dir) = &shared.api_dir else {
        return text(StatusCode::NOT_FOUND, "no --api-dir\n");
    };
    match std::fs::read_to_string(dir.join(file)) {
        Err(_) => {
            let mut r = json("{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"status\":\"Failure\",\"reason\":\"NotFound\",\"code\":404}\n".to_string());
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
        Ok(body) => match body
            .trim()
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(code) => {
                let mut r = json(format!(
                    "{{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"status\":\"Failure\",\"code\":{}}}\n",
                    code.as_u16()
                ));
                *r.status_mut() = code;
                r
            }
            None => json(body),
        },
    }
}
