//! A unified diff of two texts (`diff -u` form), for `--dry-run` output. Owns the format
//! only; the diffing itself is the `similar` crate's.

use similar::TextDiff;

/// A unified diff (`--- label`, `+++ label`, `@@ -a,b +c,d @@` hunks with 3 lines of
/// context) from `old` to `new`; empty when they are equal.
pub fn unified_diff(label: &str, old: &str, new: &str) -> String {
    if old == new {
        return String::new();
    }
    TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("{label}\t(original)"), &format!("{label}\t(new)"))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_format() {
        assert_eq!(unified_diff("f", "a\n", "a\n"), "");
        let old = "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n";
        let new = "1\n2\n3\n4\nfive\n6\n7\n8\n9\n10\n11\n12\nthirteen\n";
        let expected = "\
--- f\t(original)
+++ f\t(new)
@@ -2,7 +2,7 @@
 2
 3
 4
-5
+five
 6
 7
 8
@@ -10,3 +10,4 @@
 10
 11
 12
+thirteen
";
        assert_eq!(unified_diff("f", old, new), expected);
        // Changes close together share a hunk.
        let new2 = "1\nx\n3\n4\n5\n6\n7\ny\n9\n10\n11\n12\n";
        let d = unified_diff("f", old, new2);
        assert_eq!(d.matches("@@ -").count(), 1, "{d}");
        assert!(d.contains("@@ -1,11 +1,11 @@"), "{d}");
        // Missing trailing newline and empty sides.
        assert_eq!(
            unified_diff("f", "a", "b"),
            "--- f\t(original)\n+++ f\t(new)\n@@ -1 +1 @@\n-a\n\\ No newline at end of file\n+b\n\\ No newline at end of file\n"
        );
        assert_eq!(
            unified_diff("f", "", "a\n"),
            "--- f\t(original)\n+++ f\t(new)\n@@ -0,0 +1 @@\n+a\n"
        );
    }

    #[test]
    fn diff_applies_with_patch_semantics() {
        // Applying the hunks to the old text gives the new one, as patch(1) would.
        let old = include_str!("../../tests/data/kubeconfig/multi-cluster.yaml");
        let new =
            include_str!("../../tests/data/kubeconfig/multi-cluster.all-clusters.rewritten.yaml");
        let d = unified_diff("multi-cluster.yaml", old, new);
        assert!(d.starts_with(
            "--- multi-cluster.yaml\t(original)\n+++ multi-cluster.yaml\t(new)\n@@ -"
        ));
        let old_lines: Vec<&str> = old.split_inclusive('\n').collect();
        let mut out = String::new();
        let mut next = 0; // the next line of `old` not yet copied
        for line in d.split_inclusive('\n').skip(2) {
            if let Some(header) = line.strip_prefix("@@ -") {
                let start: usize = header.split([',', ' ']).next().unwrap().parse().unwrap();
                for l in &old_lines[next..start.saturating_sub(1)] {
                    out.push_str(l);
                }
                next = start.saturating_sub(1);
            } else if let Some(l) = line.strip_prefix(' ') {
                out.push_str(l);
                next += 1;
            } else if line.starts_with('-') {
                next += 1;
            } else if let Some(l) = line.strip_prefix('+') {
                out.push_str(l);
            }
        }
        for l in &old_lines[next..] {
            out.push_str(l);
        }
        assert_eq!(out, new);
    }
}
