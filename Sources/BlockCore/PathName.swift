/// Path names split the way backing-file names are resolved (no Foundation needed).
public enum PathName {
    /// The directory part of `path`: "" when it has no slash, "/" for a file in the root.
    public static func directory(of path: String) -> String {
        var trimmed = Substring(path)
        while trimmed.count > 1, trimmed.last == "/" { trimmed = trimmed.dropLast() }
        guard let slash = trimmed.lastIndex(of: "/") else { return "" }
        if slash == trimmed.startIndex { return "/" }
        var directory = trimmed[..<slash]
        while directory.count > 1, directory.last == "/" { directory = directory.dropLast() }
        return String(directory)
    }
}
