//! The gate: checks made on each operation once it is parsed, before it is validated and
//! before any field runs, and the error codes on every answer.
//!
//! * Mutations are refused (`not_allowed`) where the listener does not serve them.
//! * `__schema` and `__type` are refused (`not_allowed`) while introspection is off, rather
//!   than answered with a silent null.
//! * An operation with more than `graphql.calls_max` `call` fields (aliases and fragments
//!   counted) is refused (`invalid_argument`) before any call is made.
//!
//! Errors the GraphQL library raises itself (syntax, validation, the depth and complexity
//! limits) carry no code; the gate labels them `invalid_argument` with status 400, since each
//! means the operation as sent cannot run. So every error a client sees has a code.

use std::sync::{Arc, Mutex};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextPrepareRequest, NextRequest,
    NextSubscribe,
};
use async_graphql::parser::types::{
    ExecutableDocument, OperationDefinition, OperationType, Selection, SelectionSet,
};
use async_graphql::{Positioned, Request, Response, ServerError, ServerResult, Variables};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use switchyard_core::GatewayError;

use super::server_error;

#[cfg(test)]
mod tests;

/// The root field that forwards a request.
pub const CALL_FIELD: &str = "call";
/// Selections the gate visits in one operation, fragments expanded. Fragments that spread
/// each other can make an operation exponentially large once expanded; past this bound the
/// operation is refused rather than walked.
pub const SELECTIONS_VISITED_MAX: usize = 10_000;
/// Fragments nested in fragments at the root, at most; also bounds the walk's recursion, so
/// fragments that spread each other in a cycle (which validation refuses later) end it too.
pub const FRAGMENT_NESTING_MAX: usize = 16;

/// What one listener allows.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub calls_max: usize,
    pub mutations: bool,
    pub introspection: bool,
}

/// The extension factory; the schema makes one [`GateExtension`] per request.
#[derive(Debug)]
pub struct Gate(pub Rules);

impl ExtensionFactory for Gate {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(GateExtension {
            rules: self.0,
            operation_name: Mutex::new(None),
        })
    }
}

#[derive(Debug)]
pub struct GateExtension {
    rules: Rules,
    /// The operation the request asks for, seen before the document is parsed.
    operation_name: Mutex<Option<String>>,
}

/// What the root selection of one operation asks for, fragments expanded.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Census {
    pub calls: usize,
    pub introspection: bool,
    /// The walk stopped at [`SELECTIONS_VISITED_MAX`] or [`FRAGMENT_NESTING_MAX`].
    pub truncated: bool,
    visited: usize,
}

impl Census {
    /// Counts the root fields of `op`. Only root fields can be `call`, `__schema` or `__type`,
    /// so the walk follows fragments at the root and never descends into a field.
    pub fn of(doc: &ExecutableDocument, op: &OperationDefinition) -> Self {
        let mut census = Self::default();
        census.walk(doc, &op.selection_set.node, 0);
        census
    }

    fn walk(&mut self, doc: &ExecutableDocument, set: &SelectionSet, nesting: usize) {
        if nesting > FRAGMENT_NESTING_MAX {
            self.truncated = true;
            return;
        }
        for selection in &set.items {
            self.visited += 1;
            if self.visited > SELECTIONS_VISITED_MAX {
                self.truncated = true;
                return;
            }
            match &selection.node {
                Selection::Field(field) => match field.node.name.node.as_str() {
                    CALL_FIELD => self.calls += 1,
                    "__schema" | "__type" => self.introspection = true,
                    _ => {}
                },
                Selection::InlineFragment(inline) => {
                    self.walk(doc, &inline.node.selection_set.node, nesting + 1)
                }
                // An unknown fragment is left for validation to report.
                Selection::FragmentSpread(spread) => {
                    if let Some(fragment) = doc.fragments.get(&spread.node.fragment_name.node) {
                        self.walk(doc, &fragment.node.selection_set.node, nesting + 1);
                    }
                }
            }
        }
    }
}

/// The operation a request runs: the named one, or the only one. `None` leaves the error
/// (unknown or ambiguous operation) to the library.
pub fn selected<'a>(
    doc: &'a ExecutableDocument,
    name: Option<&str>,
) -> Option<&'a Positioned<OperationDefinition>> {
    let mut ops = doc.operations.iter();
    match name {
        Some(name) => ops
            .find(|(n, _)| n.map(|n| n.as_str()) == Some(name))
            .map(|(_, op)| op),
        None => {
            let first = ops.next();
            if ops.next().is_some() {
                None
            } else {
                first.map(|(_, op)| op)
            }
        }
    }
}

impl Rules {
    /// Refuses an operation this listener does not run, naming the rule.
    pub fn check(
        &self,
        doc: &ExecutableDocument,
        op: &Positioned<OperationDefinition>,
    ) -> Result<(), ServerError> {
        let refuse = |error: GatewayError| Err(server_error(&error, Some(op.pos)));
        if op.node.ty == OperationType::Mutation && !self.mutations {
            return refuse(GatewayError::NotAllowed {
                what: "mutations are served on the control listener only \
                       (graphql.mutations_on_public is off)"
                    .to_owned(),
            });
        }
        let census = Census::of(doc, &op.node);
        if census.introspection && !self.introspection {
            return refuse(GatewayError::NotAllowed {
                what: "introspection is off (graphql.introspection); the schema is published \
                       in docs/schema.graphql"
                    .to_owned(),
            });
        }
        if census.truncated {
            return refuse(GatewayError::InvalidArgument {
                field: "query",
                reason: format!(
                    "the operation expands to more than {SELECTIONS_VISITED_MAX} root selections \
                     or nests fragments more than {FRAGMENT_NESTING_MAX} deep"
                ),
            });
        }
        if census.calls > self.calls_max {
            return refuse(GatewayError::InvalidArgument {
                field: "query",
                reason: format!(
                    "the operation holds {} call fields; at most {} are allowed \
                     (graphql.calls_max), and none was made",
                    census.calls, self.calls_max
                ),
            });
        }
        Ok(())
    }
}

/// Gives every error without a code the code `invalid_argument` (see the module docs).
pub fn label(response: &mut Response) {
    for error in &mut response.errors {
        let ext = error.extensions.get_or_insert_with(Default::default);
        if ext.get("code").is_none() {
            ext.set("code", "invalid_argument");
            ext.set("status", 400);
        }
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for GateExtension {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let mut response = next.run(ctx).await;
        label(&mut response);
        response
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        next.run(ctx, stream)
            .map(|mut response| {
                label(&mut response);
                response
            })
            .boxed()
    }

    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        *crate::sync::lock(&self.operation_name) = request.operation_name.clone();
        next.run(ctx, request).await
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let doc = next.run(ctx, query, variables).await?;
        let name = crate::sync::lock(&self.operation_name).clone();
        if let Some(op) = selected(&doc, name.as_deref()) {
            self.rules.check(&doc, op)?;
        }
        Ok(doc)
    }
}
