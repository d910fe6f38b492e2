import Version

/// The package version (defined once, in the Version module, for all three programs).
public typealias BlockdVersion = Version.BlockdVersion
