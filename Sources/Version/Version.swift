/// The version every program of the package reports: `blockd --version`, `blockimg --version`,
/// `blockctl --version`, QMP `query-version`'s package field, and the Debian package's version
/// (scripts/package reads it from the built blockd). Change it here and nowhere else.
public enum BlockdVersion {
    /// The version string (a Debian upstream version: digits, dots, and `~` or `+` suffixes).
    public static let string = "0.1.0"
}
