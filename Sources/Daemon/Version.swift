/// The version every program of the package reports.
public enum BlockdVersion {
    /// The version string.
    public static let string = "0.1.0"
}
