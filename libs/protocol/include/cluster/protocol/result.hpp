#pragma once
// The one way expected failures travel inside the cluster: `result<T>` holds a T or a
// `failure` (an errc and a human-readable message). Boost.Outcome provides the type;
// `.value()` on a failure is a bug and terminates. Exceptions stay at the edges: start-up,
// libraries that throw (converted where they are called) and the SDK wrapper.
//
//   result<location> locate(...);            return failure{errc::no_runner, "shard 7"};
//   BOOST_OUTCOME_TRY(where, locate(...));    // returns the failure to the caller

#include <boost/outcome/result.hpp>
#include <boost/outcome/try.hpp>
#include <string>
#include <utility>

#include "cluster/protocol/errc.hpp"

namespace cluster {

namespace outcome = boost::outcome_v2;

/// Why an operation failed: a wire error code and what happened, for logs and callers.
struct failure {
  errc code = errc::defect;
  std::string message;
};

template <class T>
using result = outcome::result<T, failure, outcome::policy::terminate>;

/// `return success();` from a function returning result<void>.
inline auto success() { return outcome::success(); }

}  // namespace cluster
