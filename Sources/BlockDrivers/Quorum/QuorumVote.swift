#if canImport(Glibc)
import Glibc
#endif
import BlockCore

/// The vote of a quorum node over what its children answered, as a pure value (QEMU's
/// `quorum_vote`): children that succeeded are grouped by identical contents, the largest group
/// wins (the first to appear on a tie), and it must reach the vote threshold.
struct QuorumVote: Equatable {
    /// How the vote ended.
    enum Outcome: Equatable {
        /// Every child that succeeded returned the same bytes (`winner` is one of them).
        case unanimous(winner: Int)
        /// A majority reaching the threshold: `winner` holds its bytes, `outvoted` returned others.
        case majority(winner: Int, outvoted: [Int])
        /// Fewer children than the threshold succeeded, or agreed.
        case failed
    }

    let outcome: Outcome

    /// Votes over `succeeded` (child indices, in child order); `same(a, b)` compares two children's bytes.
    init(succeeded: [Int], threshold: Int, same: (Int, Int) -> Bool) {
        guard succeeded.count >= threshold, let first = succeeded.first else {
            outcome = .failed
            return
        }
        // The common case first: everything agrees with the first answer.
        if succeeded.dropFirst().allSatisfy({ same(first, $0) }) {
            outcome = .unanimous(winner: first)
            return
        }
        var groups: [[Int]] = []
        for child in succeeded {
            if let index = groups.firstIndex(where: { same($0[0], child) }) {
                groups[index].append(child)
            } else {
                groups.append([child])
            }
        }
        let best = groups.indices.max { groups[$0].count < groups[$1].count || (groups[$0].count == groups[$1].count && $0 > $1) }!
        guard groups[best].count >= threshold else {
            outcome = .failed
            return
        }
        outcome = .majority(winner: groups[best][0], outvoted: groups.enumerated().filter { $0.offset != best }.flatMap(\.element).sorted())
    }

    /// The error to return when too many children failed: the most frequent errno among them
    /// (the first to appear on a tie), as QEMU's `quorum_vote_error`.
    static func error(of failures: [BlockError]) -> BlockError {
        var counts: [(errno: Int32, count: Int, error: BlockError)] = []
        for failure in failures {
            if let index = counts.firstIndex(where: { $0.errno == failure.errno }) {
                counts[index].count += 1
            } else {
                counts.append((failure.errno, 1, failure))
            }
        }
        guard let best = counts.indices.max(by: { counts[$0].count < counts[$1].count || (counts[$0].count == counts[$1].count && $0 > $1) }) else {
            return .io("quorum: too few children agreed")
        }
        return counts[best].error
    }
}
