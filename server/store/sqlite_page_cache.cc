#include "server/store/sqlite_page_cache.h"

#include <algorithm>
#include <atomic>
#include <new>

namespace forq::server::sqlite_internal {
namespace {

// SQLite's PENDING_BYTE: the page holding it is never a database page, and
// balance_nonroot parks a page there while it swaps two.
constexpr unsigned int kPendingByte = 0x40000000;

sqlite3_pcache_methods2 inner;  // the default page cache; set once
std::atomic<long long> forwarded{0};
std::atomic<long long> skipped{0};
std::atomic<long long> scans_avoided{0};

struct Cache {
  sqlite3_pcache* inner;
  unsigned int parking;  // SwapParkingPage of this cache's page size
  // Every page of the cache has a key <= max_key, or == parking (of those
  // there are `parked`).
  unsigned int max_key = 0;
  int parked = 0;
  // A page was parked since the last truncate: pcache1's own truncate
  // would scan every bucket.
  bool swapped = false;
};

Cache* Of(sqlite3_pcache* p) { return reinterpret_cast<Cache*>(p); }

void Note(Cache* c, unsigned int key) {
  if (key == c->parking) {
    ++c->parked;
    c->swapped = true;
  } else {
    c->max_key = std::max(c->max_key, key);
  }
}

int Init(void* arg) { return inner.xInit(arg); }
void Shutdown(void* arg) { inner.xShutdown(arg); }

sqlite3_pcache* Create(int page_size, int extra, int purgeable) {
  sqlite3_pcache* p = inner.xCreate(page_size, extra, purgeable);
  if (p == nullptr) return nullptr;
  auto* c = new (std::nothrow) Cache{p, SwapParkingPage(page_size)};
  if (c == nullptr) {
    inner.xDestroy(p);
    return nullptr;
  }
  return reinterpret_cast<sqlite3_pcache*>(c);
}

void CacheSize(sqlite3_pcache* p, int n) { inner.xCachesize(Of(p)->inner, n); }

int PageCount(sqlite3_pcache* p) { return inner.xPagecount(Of(p)->inner); }

sqlite3_pcache_page* Fetch(sqlite3_pcache* p, unsigned int key, int create) {
  Cache* c = Of(p);
  sqlite3_pcache_page* page = inner.xFetch(c->inner, key, create);
  // A page found without creating one was counted when it was created. One
  // fetched at the parking number (SQLite never does) counts as parked:
  // truncates then go to pcache1 until one drops it.
  if (page != nullptr && create != 0) Note(c, key);
  return page;
}

void Unpin(sqlite3_pcache* p, sqlite3_pcache_page* page, int discard) {
  inner.xUnpin(Of(p)->inner, page, discard);
}

void Rekey(sqlite3_pcache* p, sqlite3_pcache_page* page, unsigned int old_key,
           unsigned int new_key) {
  Cache* c = Of(p);
  inner.xRekey(c->inner, page, old_key, new_key);
  if (old_key == c->parking && c->parked > 0) --c->parked;
  Note(c, new_key);
}

// Drops the pages with keys >= `limit`.
void Truncate(sqlite3_pcache* p, unsigned int limit) {
  Cache* c = Of(p);
  const bool swapped = c->swapped;
  c->swapped = false;
  if (c->parked == 0 && limit > c->max_key) {
    skipped.fetch_add(1, std::memory_order_relaxed);
    if (swapped) scans_avoided.fetch_add(1, std::memory_order_relaxed);
    return;  // no page is at or above `limit`
  }
  forwarded.fetch_add(1, std::memory_order_relaxed);
  inner.xTruncate(c->inner, limit);
  if (limit <= c->parking) c->parked = 0;
  if (limit > 0) c->max_key = std::min(c->max_key, limit - 1);
}

void Destroy(sqlite3_pcache* p) {
  Cache* c = Of(p);
  inner.xDestroy(c->inner);
  delete c;
}

void Shrink(sqlite3_pcache* p) { inner.xShrink(Of(p)->inner); }

}  // namespace

unsigned int SwapParkingPage(int page_size) {
  return kPendingByte / static_cast<unsigned int>(page_size) + 1;
}

bool InstallPageCacheLayer() {
  if (sqlite3_config(SQLITE_CONFIG_GETPCACHE2, &inner) != SQLITE_OK ||
      inner.iVersion < 1 || inner.xCreate == nullptr) {
    return false;
  }
  static sqlite3_pcache_methods2 layer;
  layer = inner;  // iVersion and pArg as the default's
  layer.xInit = Init;
  layer.xShutdown = Shutdown;
  layer.xCreate = Create;
  layer.xCachesize = CacheSize;
  layer.xPagecount = PageCount;
  layer.xFetch = Fetch;
  layer.xUnpin = Unpin;
  layer.xRekey = Rekey;
  layer.xTruncate = Truncate;
  layer.xDestroy = Destroy;
  layer.xShrink = Shrink;
  return sqlite3_config(SQLITE_CONFIG_PCACHE2, &layer) == SQLITE_OK;
}

PageCacheLayerStats PageCacheLayerCounts() {
  return {forwarded.load(std::memory_order_relaxed),
          skipped.load(std::memory_order_relaxed),
          scans_avoided.load(std::memory_order_relaxed)};
}

}  // namespace forq::server::sqlite_internal
