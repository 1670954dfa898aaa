// A thin layer over SQLite's own page cache that spares each commit a scan
// of the whole cache.
//
// When a b-tree balance swaps two pages (btree.c, balance_nonroot), SQLite
// parks one of them at a temporary page number, the pending-byte page
// (262,145 with 4 KiB pages), and the default page cache (pcache1) remembers
// it as the highest key it ever held. At the end of every write
// transaction the pager truncates the cache to the database size; with that
// highest key far above the size, pcache1 walks all its hash buckets (4,096
// for forqd's 16 MiB cache), at each commit, for pages that are not there:
// 5-8% of the store writer's time under SubmitBatch (bench/RESULTS.md).
//
// This layer forwards every call to the default implementation and keeps,
// per cache, an upper bound of the keys its pages may have, not counting
// pages parked at the temporary number (it counts those apart). A truncate
// that no page can be above is answered without calling pcache1; any other
// is forwarded. It changes no page's content or key.
#ifndef FORQ_SERVER_STORE_SQLITE_PAGE_CACHE_H_
#define FORQ_SERVER_STORE_SQLITE_PAGE_CACHE_H_

#include <sqlite3.h>

namespace forq::server::sqlite_internal {

// Installs the layer for the process. Must run before sqlite3_initialize()
// (the first sqlite3_open does it); later it is refused by SQLite and
// returns false, leaving the default page cache in place.
bool InstallPageCacheLayer();

// The temporary page number of a balance's page swap for `page_size`.
unsigned int SwapParkingPage(int page_size);

// For tests: truncates forwarded to the default page cache, answered
// without it, and of those the ones after a page swap (where pcache1 would
// have scanned all its buckets), over all caches since the process started.
struct PageCacheLayerStats {
  long long forwarded = 0;
  long long skipped = 0;
  long long scans_avoided = 0;
};
PageCacheLayerStats PageCacheLayerCounts();

}  // namespace forq::server::sqlite_internal

#endif  // FORQ_SERVER_STORE_SQLITE_PAGE_CACHE_H_
