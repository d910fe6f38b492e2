/// Who gets a connection slot. While slots are free everyone does, as with QEMU's
/// `max-connections`. When all are taken, a newcomer takes the newest connection of the peer
/// holding the most, provided that peer holds more than `protectedPerPeer` connections and at
/// least two more than the newcomer's peer; otherwise the newcomer waits for a slot (QEMU keeps
/// it waiting too: a full server stops accepting). So one peer
/// (a process on a unix socket, an address over TCP) that keeps reconnecting cannot hold every
/// slot against others, while a peer using up to `protectedPerPeer` connections never loses one.
public struct ConnectionAdmission: Sendable, Equatable {
    /// One live connection as admission sees it.
    public struct Slot: Sendable, Equatable {
        /// The peer's identity (`Peer.identity`).
        public var peer: String
        /// Whether it finished the handshake and uses an export.
        public var attached: Bool
        /// Order of admission: higher is newer.
        public var sequence: UInt64

        /// A slot.
        public init(peer: String, attached: Bool, sequence: UInt64) {
            self.peer = peer
            self.attached = attached
            self.sequence = sequence
        }
    }

    /// What to do with a newcomer.
    public enum Decision<ID: Hashable & Sendable>: Sendable, Equatable {
        /// A slot is free.
        case admit
        /// Admit after closing this connection of the peer holding the most.
        case admitClosing(ID)
        /// No slot for now: every slot is taken and no peer holds more than its share; the newcomer waits.
        case refuse
    }

    /// Most connections at once.
    public var maxConnections: Int
    /// Connections per peer that are never closed to make room for another peer.
    public var protectedPerPeer: Int

    /// The admission rule for `maxConnections` slots.
    public init(maxConnections: Int, protectedPerPeer: Int = 16) {
        self.maxConnections = maxConnections
        self.protectedPerPeer = protectedPerPeer
    }

    /// Decides for a newcomer from `peer`, given the live connections.
    public func decide<ID: Hashable & Sendable>(peer: String, live: [ID: Slot]) -> Decision<ID> {
        guard live.count >= maxConnections else { return .admit }
        var held: [String: Int] = [:]
        for slot in live.values { held[slot.peer, default: 0] += 1 }
        let mine = held[peer] ?? 0
        // The peer holding the most; of equals, the first by name, so that hashing does not choose.
        guard let (hog, count) = held.filter({ $0.key != peer }).max(by: { ($0.value, $1.key) < ($1.value, $0.key) }),
              count > protectedPerPeer, count >= mine + 2 else {
            return .refuse
        }
        // Its newest connection still in the handshake, else its newest.
        let victim = live.filter { $0.value.peer == hog }.max { a, b in
            (a.value.attached ? 0 : 1, a.value.sequence) < (b.value.attached ? 0 : 1, b.value.sequence)
        }
        return victim.map { .admitClosing($0.key) } ?? .refuse
    }
}
