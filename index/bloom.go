package index

import "encoding/binary"

// bloom is a blocked Bloom filter: each key sets bloomProbes bits within one
// 512-bit block, so a query touches one cache line. Keys are keyed hashes,
// uniformly spread already, so their own bytes choose block and bits.
type bloom []uint64

const (
	bloomBitsPerKey = 12 // about 1% false positives with 7 probes in a block
	bloomProbes     = 7
)

func newBloom(n int) bloom {
	blocks := max(1, (n*bloomBitsPerKey+511)/512)
	return make(bloom, blocks*8)
}

func (f bloom) locate(k key) (block []uint64, bits uint64) {
	n := uint64(len(f) / 8)
	b := binary.LittleEndian.Uint64(k[1:9]) % n
	return f[b*8 : b*8+8], binary.LittleEndian.Uint64(k[9:17])
}

func (f bloom) add(k key) {
	block, bits := f.locate(k)
	for range bloomProbes {
		i := bits & 511
		block[i/64] |= 1 << (i % 64)
		bits >>= 9
	}
}

func (f bloom) has(k key) bool {
	block, bits := f.locate(k)
	for range bloomProbes {
		i := bits & 511
		if block[i/64]&(1<<(i%64)) == 0 {
			return false
		}
		bits >>= 9
	}
	return true
}

func (f bloom) encode() []byte {
	b := make([]byte, 8*len(f))
	for i, w := range f {
		binary.LittleEndian.PutUint64(b[8*i:], w)
	}
	return b
}

// decodeBloom reads an encoded filter. A malformed one becomes a filter that
// answers "maybe" to everything: slower, never wrong.
func decodeBloom(b []byte) bloom {
	if len(b) == 0 || len(b)%64 != 0 {
		f := make(bloom, 8)
		for i := range f {
			f[i] = ^uint64(0)
		}
		return f
	}
	f := make(bloom, len(b)/8)
	for i := range f {
		f[i] = binary.LittleEndian.Uint64(b[8*i:])
	}
	return f
}
