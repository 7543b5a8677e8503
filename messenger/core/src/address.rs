//! User addresses across servers: `name@domain`, where the domain is the user's home server.
//!
//! A client and a server write their own users' addresses bare (`alice`) and every other
//! server's qualified (`bob@b.example`), so that one string names one user wherever it is
//! stored. [`Address::parse`] takes either form; [`Address::relative_to`] writes an address
//! as the server of `home` does.

use std::fmt;

/// Why an address was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// The user part is empty, too long, or holds a character a user name may not.
    #[error("not a user name: 1 to 32 characters of a-z, 0-9, '_', '.', '-'")]
    User,
    /// The domain is not a DNS name of lowercase labels.
    #[error(
        "not a domain: dot-separated labels of a-z, 0-9 and '-', each 1 to 63 characters, \
         at most 253 in all"
    )]
    Domain,
}

/// A user, and the domain of its home server when it is named (`None`: the home server of
/// whoever wrote the address).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    user: String,
    domain: Option<String>,
}

/// Whether `name` is a valid user name: 1 to 32 characters of `a-z`, `0-9`, `_`, `.`, `-`.
pub fn is_user(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
}

/// Whether `domain` is a DNS name a server may have: lowercase labels of `a-z`, `0-9` and
/// `-` (not at either end), each 1 to 63 characters, at most 253 in all.
pub fn is_domain(domain: &str) -> bool {
    (1..=253).contains(&domain.len())
        && domain.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

impl Address {
    /// `user` on the server of `domain` (`None`: the writer's home server).
    pub fn new(user: &str, domain: Option<&str>) -> Result<Self, AddressError> {
        if !is_user(user) {
            return Err(AddressError::User);
        }
        if let Some(domain) = domain
            && !is_domain(domain)
        {
            return Err(AddressError::Domain);
        }
        Ok(Self {
            user: user.to_owned(),
            domain: domain.map(str::to_owned),
        })
    }

    /// Parses `name` or `name@domain`.
    pub fn parse(text: &str) -> Result<Self, AddressError> {
        match text.split_once('@') {
            None => Self::new(text, None),
            Some((user, domain)) => Self::new(user, Some(domain)),
        }
    }

    /// The user name, without the domain.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The domain, when the address names one.
    pub fn domain(&self) -> Option<&str> {
        self.domain.as_deref()
    }

    /// The user's home domain, taking a bare address to be on `home`.
    pub fn domain_or<'a>(&'a self, home: &'a str) -> &'a str {
        self.domain.as_deref().unwrap_or(home)
    }

    /// Whether the user's home is `home` (a bare address is).
    pub fn is_local_to(&self, home: &str) -> bool {
        self.domain.as_deref().is_none_or(|d| d == home)
    }

    /// The address as the server of `home` writes it: bare for its own users, qualified for
    /// everyone else's.
    pub fn relative_to(&self, home: &str) -> String {
        match self.domain.as_deref() {
            Some(domain) if domain != home => format!("{}@{domain}", self.user),
            _ => self.user.clone(),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.domain {
            Some(domain) => write!(f, "{}@{domain}", self.user),
            None => f.write_str(&self.user),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bare_and_qualified() {
        let bare = Address::parse("alice").unwrap();
        assert_eq!((bare.user(), bare.domain()), ("alice", None));
        assert!(bare.is_local_to("a.example"));
        let bob = Address::parse("bob@b.example").unwrap();
        assert_eq!((bob.user(), bob.domain()), ("bob", Some("b.example")));
        assert_eq!(bob.relative_to("a.example"), "bob@b.example");
        assert_eq!(bob.relative_to("b.example"), "bob");
        assert!(!bob.is_local_to("a.example"));
        assert_eq!(bob.to_string(), "bob@b.example");
        assert_eq!(bob.domain_or("x"), "b.example");
    }

    #[test]
    fn malformed_addresses_say_which_part() {
        for bad in ["", "Alice", "a b", "a/b", "@b.example", &"x".repeat(33)] {
            assert_eq!(Address::parse(bad), Err(AddressError::User), "{bad:?}");
        }
        for bad in [
            "bob@",
            "bob@B.example",
            "bob@b..example",
            "bob@-b.example",
            "bob@b-.example",
            "bob@b.example/x",
            "bob@b.example:7443",
            "bob@a@b",
            "bob@b_x.example",
        ] {
            assert_eq!(Address::parse(bad), Err(AddressError::Domain), "{bad:?}");
        }
        assert!(is_domain(&format!("{}.{}", "a".repeat(63), "b".repeat(63))));
        assert!(!is_domain(&"a".repeat(64)));
        let long = vec!["a".repeat(63); 4].join(".");
        assert_eq!(long.len(), 255);
        assert!(!is_domain(&long));
    }

    proptest! {
        #[test]
        fn parsing_never_panics_and_round_trips(text in ".{0,80}") {
            if let Ok(address) = Address::parse(&text) {
                prop_assert_eq!(address.to_string(), text.clone());
                prop_assert_eq!(Address::parse(&address.to_string()), Ok(address));
            }
        }

        #[test]
        fn relative_forms_name_the_same_user(
            user in "[a-z0-9_.-]{1,32}",
            domain in "[a-z0-9]{1,10}(\\.[a-z0-9]{1,10}){0,3}",
            home in "[a-z0-9]{1,10}\\.test",
        ) {
            let address = Address::new(&user, Some(&domain)).unwrap();
            let written = Address::parse(&address.relative_to(&home)).unwrap();
            prop_assert_eq!(written.domain_or(&home), domain.as_str());
            prop_assert_eq!(written.user(), user.as_str());
        }
    }
}
