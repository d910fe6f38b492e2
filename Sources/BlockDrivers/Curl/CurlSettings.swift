#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock
import CCurl

/// The options every transfer of a curl node uses (QEMU's BlockdevOptionsCurl* members).
struct CurlSettings: Sendable {
    var url: String
    var timeout: UInt64 = 5
    var sslVerify = true
    var cookie: String?
    var username: String?
    var password: String?
    var proxyUsername: String?
    var proxyPassword: String?

    /// libcurl's process-wide initialisation, run once.
    static let globalInit: Int32 = blk_curl_global_init()

    /// Reads the options of a `name` node.
    static func read(_ options: OptionReader, driver name: String) throws(OptionError) -> CurlSettings {
        var settings = CurlSettings(url: try options.requiredString("url"))
        let scheme = settings.url.split(separator: ":").first.map { $0.lowercased() } ?? ""
        guard scheme == name else {
            throw options.failure("the url '\(settings.url)' is not a \(name):// URL", qmp: "The url '\(settings.url)' is not a \(name) URL")
        }
        if let timeout = try options.unsigned("timeout") {
            guard timeout > 0, timeout <= 100_000 else {
                throw options.failure("timeout must be from 1 to 100000 seconds", qmp: "Invalid timeout value")
            }
            settings.timeout = timeout
        }
        if name == "https" || name == "ftps" { settings.sslVerify = try options.bool("sslverify") ?? true }
        if name == "http" || name == "https" {
            settings.cookie = try options.string("cookie")
            if let secret = try options.string("cookie-secret") {
                if settings.cookie != nil { throw options.failure("cookie and cookie-secret are mutually exclusive") }
                settings.cookie = try NodeObjects.shared.secretText(secret)
            }
        }
        settings.username = try options.string("username")
        settings.proxyUsername = try options.string("proxy-username")
        if let secret = try options.string("password-secret") {
            settings.password = try NodeObjects.shared.secretText(secret)
        }
        if let secret = try options.string("proxy-password-secret") {
            settings.proxyPassword = try NodeObjects.shared.secretText(secret)
        }
        return settings
    }

    /// Runs `body` with the settings as libcurl's C structure.
    func withC<T>(_ body: (UnsafePointer<blk_curl_settings>) -> T) -> T {
        func cString(_ text: String?) -> UnsafeMutablePointer<CChar>? { text.flatMap { strdup($0) } }
        let strings = [cString(url), cString(cookie), cString(username), cString(password), cString(proxyUsername), cString(proxyPassword)]
        defer { for string in strings { free(string) } }
        var c = blk_curl_settings(
            url: strings[0], timeout_seconds: Int(timeout), ssl_verify: sslVerify ? 1 : 0, cookie: strings[1], username: strings[2],
            password: strings[3], proxy_username: strings[4], proxy_password: strings[5])
        return body(&c)
    }
}
