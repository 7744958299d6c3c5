//! The parts of the OpenAPI document that are not a handler's: title, description, tags, and the
//! bearer-token security added to exactly the operations [`Auth`] protects.

use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};

use super::auth::Auth;
use super::error::{ErrorBody, ErrorCode};

const SCHEME: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "safekeeper admin API",
        description = "Status, lag and control of the clusters a safekeeper follows.\n\n\
            LSNs are strings in PostgreSQL's notation. Lag stages: `flush` = received - flushed \
            (fsync), `upload` = commit - remote (acknowledged WAL not in remote storage in any \
            form; remote = max(backup LSN, newest partial's commit LSN)), `backup` = commit - \
            backup (acknowledged WAL not yet in a full remote segment). Seconds are the age of \
            the oldest byte of the stage. The primary's own end of WAL is unknown to a receiver, \
            so receive lag is not reported.\n\n\
            Errors are `{\"error\": \"...\", \"code\": \"...\"}` with a stable `code`: 400 bad \
            input, 401 missing or wrong bearer token, 404 unknown cluster or route, 405 wrong \
            method, 409 conflicting request, 413/415 body problems, 503 operation failed.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "service", description = "The process"),
        (name = "clusters", description = "Followed clusters"),
        (name = "actions", description = "Make a cluster act now"),
    ),
    components(schemas(ErrorBody, ErrorCode)),
)]
struct ApiDoc;

/// The document before the routes are added.
pub(super) fn base() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// Documents the bearer token on every operation `auth` protects, with its 401 answer.
pub(super) fn apply_auth(doc: &mut utoipa::openapi::OpenApi, auth: &Auth) {
    if !auth.enabled() {
        return;
    }
    let components = doc.components.get_or_insert_with(Default::default);
    components.security_schemes.insert(
        SCHEME.to_string(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("The token of --http-auth-token-file"))
                .build(),
        ),
    );
    let unauthorized = ResponseBuilder::new()
        .description("Missing or wrong bearer token")
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build();
    for (path, item) in doc.paths.paths.iter_mut() {
        if !auth.protects(path) {
            continue;
        }
        let ops = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for op in ops.into_iter().flatten() {
            op.security = Some(vec![SecurityRequirement::new(SCHEME, Vec::<String>::new())]);
            op.responses
                .responses
                .insert("401".to_string(), RefOr::T(unauthorized.clone()));
        }
    }
}
