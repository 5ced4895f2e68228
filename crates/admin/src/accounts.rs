//! The cluster's admin accounts: names and argon2id hashes (never a password), replicated
//! with the policy as one more content of its bundle, so an account added on any node
//! works on every node. A request to a state-changing endpoint from anywhere but this node
//! must name an account and its password (HTTP Basic); the password is checked against the
//! hash off the async workers.

use std::collections::BTreeMap;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// Where the accounts travel in a policy bundle (a name no policy may declare).
pub const ACCOUNTS_KEY: &str = ".palisade/accounts.json";

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// PHC string: `$argon2id$v=19$m=...,t=...,p=...$salt$hash`.
    pub hash: String,
    /// Unix milliseconds when it was made or its password last set.
    pub changed_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accounts {
    pub accounts: BTreeMap<String, Account>,
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("account names are 1 to 64 letters, digits, '.', '-', '_' or '@': {0:?}")]
    BadName(String),
    #[error("a password must be 12 characters at least")]
    ShortPassword,
    #[error("cannot hash the password: {0}")]
    Hash(String),
    #[error("no randomness available for a salt")]
    Random,
    #[error("the accounts are not readable: {0}")]
    Malformed(String),
}

pub fn check_name(name: &str) -> Result<(), AccountError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | '_' | '@'));
    if valid {
        Ok(())
    } else {
        Err(AccountError::BadName(name.to_owned()))
    }
}

/// An argon2id hash of `password` with a fresh random salt (argon2's default costs).
pub fn hash_password(password: &str) -> Result<String, AccountError> {
    if password.chars().count() < 12 {
        return Err(AccountError::ShortPassword);
    }
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .map_err(|_| AccountError::Random)?;
    let salt =
        SaltString::encode_b64(&salt).map_err(|error| AccountError::Hash(error.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| AccountError::Hash(error.to_string()))
}

impl Accounts {
    pub fn from_json(text: &str) -> Result<Accounts, AccountError> {
        let accounts: Accounts = serde_json::from_str(text)
            .map_err(|error| AccountError::Malformed(error.to_string()))?;
        for (name, account) in &accounts.accounts {
            check_name(name)?;
            PasswordHash::new(&account.hash)
                .map_err(|error| AccountError::Malformed(format!("{name}: {error}")))?;
        }
        Ok(accounts)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// Whether `password` is `name`'s (slow on purpose: call it off the async workers).
    pub fn verify(&self, name: &str, password: &str) -> bool {
        let Some(account) = self.accounts.get(name) else {
            // The same work for an unknown name, so timing does not tell names apart.
            let _ = hash_password("not an account's password");
            return false;
        };
        PasswordHash::new(&account.hash).is_ok_and(|hash| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        })
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_their_password_only_and_round_trip() {
        let hash = hash_password("correct horse battery").unwrap_or_else(|error| panic!("{error}"));
        assert!(hash.starts_with("$argon2id$"));
        let mut accounts = Accounts::default();
        accounts.accounts.insert(
            "alice".to_owned(),
            Account {
                hash,
                changed_ms: 1,
            },
        );
        assert!(accounts.verify("alice", "correct horse battery"));
        assert!(!accounts.verify("alice", "correct horse battery!"));
        assert!(!accounts.verify("bob", "correct horse battery"));
        let again =
            Accounts::from_json(&accounts.to_json()).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(again, accounts);
        assert!(
            !accounts.to_json().contains("correct horse"),
            "no password stored"
        );
        assert!(matches!(
            hash_password("short"),
            Err(AccountError::ShortPassword)
        ));
        for bad in ["", "a b", "x/y", &"n".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(
            Accounts::from_json("{\"accounts\":{\"eve\":{\"hash\":\"plain\",\"changed_ms\":0}}}")
                .is_err()
        );
    }
}
