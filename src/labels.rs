//! Label helpers shared by the metrics and the pod index: a leaf module, so both can use
//! them without depending on each other.

/// Label values longer than this are cut (on a character boundary): one hostile container
/// name must not bloat every scrape.
pub const MAX_LABEL_VALUE_BYTES: usize = 1024;

/// Cuts a label value to [`MAX_LABEL_VALUE_BYTES`]; escaping is the encoder's job.
pub fn cut_label_value(v: &str) -> &str {
    if v.len() <= MAX_LABEL_VALUE_BYTES {
        return v;
    }
    let mut end = MAX_LABEL_VALUE_BYTES;
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    &v[..end]
}

/// Turns an arbitrary key (an annotation name) into a valid label name: `[a-zA-Z0-9_]`,
/// not starting with a digit.
pub fn sanitize_label_key(k: &str) -> String {
    let mut s: String = k
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn label_values_are_cut_on_a_character_boundary() {
        let long = "é".repeat(1000);
        let cut = cut_label_value(&long);
        assert!(cut.len() <= MAX_LABEL_VALUE_BYTES);
        assert_eq!(cut.len(), 1024);
        assert_eq!(cut_label_value("short"), "short");
    }

    #[test]
    fn label_keys_are_sanitized() {
        assert_eq!(sanitize_label_key("example.com/owner"), "example_com_owner");
        assert_eq!(sanitize_label_key("9lives"), "_9lives");
    }
}
