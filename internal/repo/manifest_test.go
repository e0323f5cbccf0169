package repo

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestEncodeManifest(t *testing.T) {
	m := &Manifest{Format: ManifestFormat, Version: 1, ID: "20240501T120000Z", VM: VMRef{Moref: "vm-1", Name: `a" }`}, Status: StatusComplete,
		Disks: []DiskImage{{Key: 2000, Capacity: 1 << 20, Level: LevelFull, Image: "20240501T120000Z-disk2000.qcow2", SHA256: strings.Repeat("a", 64),
			Chunks: []Chunk{{0, 512, KindData, strings.Repeat("b", 64)}, {512, 1024, KindZero, ""}}}}}
	b, err := encodeManifest(m)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{
		`{"offset": 0, "length": 512, "kind": "data", "sha256": "` + strings.Repeat("b", 64) + `"}`,
		`{"offset": 512, "length": 1024, "kind": "zero"}`,
	} {
		if !strings.Contains(s, want) {
			t.Fatalf("no %s in\n%s", want, s)
		}
	}
	var back Manifest
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(&back, m) {
		t.Fatalf("round trip: %v\n%s", err, s)
	}
	if err := back.Validate(); err != nil {
		t.Fatal(err)
	}
}
