use async_graphql::parser::parse_query;

use super::*;

fn census(query: &str) -> Census {
    let doc = parse_query(query).unwrap();
    let op = selected(&doc, None).expect("one operation");
    Census::of(&doc, &op.node)
}

const RULES: Rules = Rules {
    calls_max: 2,
    mutations: false,
    introspection: false,
};

fn check(query: &str, name: Option<&str>) -> Result<(), String> {
    let doc = parse_query(query).unwrap();
    let op = selected(&doc, name).expect("the operation");
    RULES.check(&doc, op).map_err(|e| {
        let code = e.extensions.as_ref().and_then(|x| x.get("code")).cloned();
        format!("{code:?}: {}", e.message)
    })
}

#[test]
fn calls_are_counted_through_aliases_and_fragments_at_the_root_only() {
    let c = census(
        r#"query { a: call(service: "x") { status } ... on Query { b: call(service: "y") { status } }
                   ...F node { nodeId } }
           fragment F on Query { c: call(service: "z") { status } d: call(service: "z") { status } }"#,
    );
    assert_eq!(c.calls, 4);
    assert!(!c.introspection && !c.truncated);
    // A field of a call's answer named like a root field is not a root field.
    assert_eq!(census("{ node { call } }").calls, 0);
    assert!(census("{ __type(name: \"Query\") { name } }").introspection);
    assert!(!census("{ __typename }").introspection);
}

#[test]
fn cyclic_and_exploding_fragments_end_the_walk() {
    let cyclic = census("query { ...A } fragment A on Query { ...B } fragment B on Query { ...A }");
    assert!(cyclic.truncated);
    // Each level spreads the next twice: 2^16 leaves once expanded.
    let mut doc = String::from("query { ...F0 }\n");
    for i in 0..16 {
        doc.push_str(&format!(
            "fragment F{i} on Query {{ ...F{n} ...F{n} }}\n",
            n = i + 1
        ));
    }
    doc.push_str("fragment F16 on Query { node { nodeId } }\n");
    assert!(census(&doc).truncated);
    assert!(check(&doc, None).unwrap_err().contains("invalid_argument"));
}

#[test]
fn the_rules_refuse_what_the_listener_does_not_serve() {
    assert!(check("{ a: call(service: \"x\") { status } }", None).is_ok());
    let err = check(
        "{ a: call(service: \"x\") { status } b: call(service: \"x\") { status } c: call(service: \"x\") { status } }",
        None,
    )
    .unwrap_err();
    assert!(
        err.contains("invalid_argument") && err.contains("3 call fields"),
        "{err}"
    );
    let err = check(
        "mutation { deregister(service: \"s\", instanceId: \"i\") { existed } }",
        None,
    )
    .unwrap_err();
    assert!(
        err.contains("not_allowed") && err.contains("mutations"),
        "{err}"
    );
    let err = check("{ __schema { types { name } } }", None).unwrap_err();
    assert!(
        err.contains("not_allowed") && err.contains("introspection"),
        "{err}"
    );
    // The named operation is the one checked.
    let two = "query Q { node { nodeId } } mutation M { deregister(service: \"s\", instanceId: \"i\") { existed } }";
    assert!(check(two, Some("Q")).is_ok());
    assert!(check(two, Some("M")).is_err());
    let doc = parse_query(two).unwrap();
    assert!(
        selected(&doc, None).is_none(),
        "ambiguous: left to the library"
    );
    assert!(selected(&doc, Some("X")).is_none());
}
