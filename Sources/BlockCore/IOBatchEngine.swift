/// A file descriptor and offset a request can be sent to directly, bypassing the driver's own code;
/// or an asynchronous driver (a remote server) that takes the request instead of a file.
public struct DirectTarget: Sendable {
    /// The open file (-1 for an asynchronous driver).
    public var fd: Int32
    /// The request's offset in that file (or in the asynchronous driver).
    public var offset: UInt64
    /// The asynchronous driver the request goes to, when it is not a file.
    public var remote: (any AsyncTarget)?
    /// What the file needs buffers (and offsets, lengths) aligned to: O_DIRECT's block, else 1.
    public var alignment: Int = 1

    /// Creates a target.
    public init(fd: Int32, offset: UInt64, alignment: Int = 1) {
        self.fd = fd
        self.offset = offset
        self.remote = nil
        self.alignment = alignment
    }

    /// A target that is an asynchronous driver.
    public init(remote: any AsyncTarget, offset: UInt64) {
        self.fd = -1
        self.offset = offset
        self.remote = remote
    }
}

/// An I/O engine owned by one thread that runs many reads and writes with one system call
/// (`aio=native`: io_uring). Buffers handed to it stay untouched until `complete` returns.
public protocol IOBatchEngine: AnyObject {
    /// Queues a read of `length` bytes into `buffer`; false when the engine is full.
    func queueRead(_ target: DirectTarget, into buffer: UnsafeMutableRawPointer, length: Int, token: Int) -> Bool
    /// Queues a write (durable on completion when `fua`); false when the engine is full.
    func queueWrite(_ target: DirectTarget, from buffer: UnsafeRawPointer, length: Int, fua: Bool, token: Int) -> Bool
    /// Starts what is queued without waiting for it (`complete` still reports it); buffers stay in use.
    func submit()
    /// Runs everything queued and reports each completion: the token and the bytes done or `-errno`.
    func complete(_ completion: (_ token: Int, _ result: Int32) -> Void)
}

extension IOBatchEngine {
    /// Default: queued operations start in `complete`.
    public func submit() {}
}

/// Creates the engine for a new connection thread, or nil to use the drivers' synchronous path.
public typealias IOBatchEngineFactory = @Sendable () -> (any IOBatchEngine)?
