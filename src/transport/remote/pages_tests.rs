use std::collections::HashSet;

use url::Url;

use super::{PAGE_ENTRIES, advance, page_items};

fn u(s: &str) -> Url {
    Url::parse(s).unwrap()
}

#[test]
fn pages_read_into_names() {
    let body = br#"{"name":"app","tags":["v1","v2"],"manifest":{"sha256:x":{"big":[1,2,3]}}}"#;
    assert_eq!(page_items(body, "tags").unwrap(), ["v1", "v2"]);
    assert!(
        page_items(br#"{"name":"app","tags":null}"#, "tags")
            .unwrap()
            .is_empty()
    );
    assert!(page_items(br#"{"name":"app"}"#, "tags").unwrap().is_empty());
    let catalog = br#"{"repositories":["a/b","c"]}"#;
    assert_eq!(page_items(catalog, "repositories").unwrap(), ["a/b", "c"]);
}

#[test]
fn a_page_of_another_shape_is_an_error_not_an_empty_list() {
    for bad in [
        &br#"{"tags":"v1"}"#[..],
        br#"{"tags":[1,2]}"#,
        br#"{"tags":{"a":1}}"#,
        b"<html><body>Sign in</body></html>",
        b"",
        br#"{"tags":["v1""#,
    ] {
        assert!(
            page_items(bad, "tags").is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn a_page_with_too_many_names_is_refused() {
    let names: Vec<String> = (0..=PAGE_ENTRIES).map(|i| format!("t{i}")).collect();
    let body = serde_json::to_vec(&serde_json::json!({ "tags": names })).unwrap();
    let e = page_items(&body, "tags").unwrap_err().to_string();
    assert!(e.contains("more than"), "{e}");
    let ok = serde_json::to_vec(&serde_json::json!({ "tags": &names[..PAGE_ENTRIES] })).unwrap();
    assert_eq!(page_items(&ok, "tags").unwrap().len(), PAGE_ENTRIES);
}

#[test]
fn pagination_must_move_forward_on_the_same_listing() {
    let first = u("http://r:5000/v2/app/tags/list?n=1000");
    let page2 = u("http://r:5000/v2/app/tags/list?n=1000&last=b");
    let mut seen = HashSet::from([first.clone()]);
    advance(&first, &first, &page2, &seen).unwrap();
    seen.insert(page2.clone());
    let page3 = u("http://r:5000/v2/app/tags/list?n=1000&last=c");
    advance(&first, &page2, &page3, &seen).unwrap();

    let why = |next: &str| advance(&first, &page2, &u(next), &seen).unwrap_err();
    // a repeated `last`, or one that goes backwards
    assert!(why("http://r:5000/v2/app/tags/list?n=1000&last=b").contains("does not advance"));
    assert!(why("http://r:5000/v2/app/tags/list?last=a&n=1000").contains("does not advance"));
    // the same page under the first URL
    assert!(why("http://r:5000/v2/app/tags/list?n=1000").contains("repeats"));
    // elsewhere
    assert!(why("http://evil:5000/v2/app/tags/list?last=z").contains("another host"));
    assert!(why("https://r:5000/v2/app/tags/list?last=z").contains("another host"));
    assert!(why("http://r:5000/v2/victim/tags/list?last=z").contains("leaves the listing"));
    assert!(why("http://r:5000/admin?last=z").contains("leaves the listing"));
}
