//! Request targets: never panic; an accepted host is lower-case and round-trips; the
//! canonical path the rules see is a fixed point with no shape a rule could be dodged with.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_proxy::target::{
    Host, canonical_path, has_escaped_slash, parse_absolute, parse_authority, parse_connect,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(target) = parse_absolute(text) {
        assert!(target.path_and_query.starts_with('/'));
        check_host(&target.authority.host);
        // The authority we print parses back to the same thing.
        let again = parse_authority(&target.authority.to_string(), None);
        assert_eq!(again.as_ref(), Ok(&target.authority));
        let canonical = canonical_path(&target.path_and_query);
        assert!(canonical.starts_with('/'));
        assert_eq!(canonical_path(&canonical), canonical);
        let path = canonical.split('?').next().unwrap_or_default();
        assert!(!path.contains("//") && !path.contains('\\') && !path.contains(';'));
        assert!(
            !path
                .split('/')
                .any(|segment| segment == "." || segment == "..")
        );
        assert!(!has_escaped_slash(&canonical));
    }
    if let Ok(authority) = parse_connect(text) {
        check_host(&authority.host);
    }
});

fn check_host(host: &Host) {
    if let Host::Name(name) = host {
        assert_eq!(name, &name.to_ascii_lowercase());
        assert!(!name.is_empty() && !name.ends_with('.'));
    }
}
