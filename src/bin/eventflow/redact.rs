//! Keeping passwords out of everything the command prints.

/// The passwords found in the connection settings, to scrub from any text printed.
#[derive(Debug, Default)]
pub struct Secrets(Vec<String>);

impl Secrets {
    /// Remembers the password in `url` (URL or `key=value` form), if any.
    pub fn add_from(&mut self, url: &str) {
        if let Some(password) = password_in(url) {
            if !password.is_empty() {
                let decoded = percent_decode(&password);
                if decoded != password {
                    self.0.push(decoded);
                }
                self.0.push(password);
            }
        }
        // Longest first, so a password containing another is replaced whole.
        self.0.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
    }

    /// `text` with every known password replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        let mut text = text.to_string();
        for secret in &self.0 {
            text = text.replace(secret.as_str(), "***");
        }
        text
    }
}

/// The password in `scheme://user:password@host/...`, or in `... password=secret ...`.
fn password_in(url: &str) -> Option<String> {
    if let Some((_, rest)) = url.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let userinfo = &authority[..authority.rfind('@')?];
        return userinfo.split_once(':').map(|(_, pw)| pw.to_string());
    }
    let start = url.find("password=")? + "password=".len();
    let rest = &url[start..];
    if let Some(quoted) = rest.strip_prefix('\'') {
        return Some(quoted.split('\'').next().unwrap_or("").to_string());
    }
    Some(rest.split_whitespace().next().unwrap_or("").to_string())
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `url` with its password shown as `***`, for display.
pub fn redacted(url: &str) -> String {
    let mut secrets = Secrets::default();
    secrets.add_from(url);
    secrets.scrub(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_found_in_both_forms_and_scrubbed() {
        assert_eq!(
            redacted("postgres://app:s3cret@db.example:5432/app"),
            "postgres://app:***@db.example:5432/app"
        );
        assert_eq!(
            redacted("host=db user=app password=s3cret dbname=app"),
            "host=db user=app password=*** dbname=app"
        );
        assert_eq!(
            redacted("host=db password='two words' user=app"),
            "host=db password='***' user=app"
        );
        assert_eq!(
            redacted("redis://:hunter2@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redacted("/var/lib/app/inbox.db"), "/var/lib/app/inbox.db");

        let mut secrets = Secrets::default();
        secrets.add_from("postgres://app:p%40ss@db/app");
        assert_eq!(
            secrets.scrub("login failed for p@ss and p%40ss"),
            "login failed for *** and ***"
        );
    }
}
