package extent

import (
	"reflect"
	"testing"
)

func TestNormalize(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []Extent
		want List
	}{
		{"empty", nil, List{}},
		{"drops zero length", []Extent{{5, 0}, {10, 1}}, List{{10, 1}}},
		{"sorts", []Extent{{20, 5}, {0, 5}}, List{{0, 5}, {20, 5}}},
		{"merges overlap", []Extent{{0, 10}, {5, 10}}, List{{0, 15}}},
		{"merges adjacent", []Extent{{0, 10}, {10, 10}}, List{{0, 20}}},
		{"contained", []Extent{{0, 100}, {10, 10}, {50, 5}}, List{{0, 100}}},
		{"unsorted overlap chain", []Extent{{30, 10}, {0, 15}, {12, 20}}, List{{0, 40}}},
		{"gap kept", []Extent{{0, 10}, {11, 1}}, List{{0, 10}, {11, 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Normalize(append([]Extent(nil), tc.in...))
			if len(got) == 0 && len(tc.want) == 0 {
				return
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Normalize(%v) = %v, want %v", tc.in, got, tc.want)
			}
		})
	}
}

func TestIntersectClip(t *testing.T) {
	a := List{{0, 100}, {200, 100}}
	b := List{{50, 200}, {290, 20}}
	if got, want := Intersect(a, b), (List{{50, 50}, {200, 50}, {290, 10}}); !reflect.DeepEqual(got, want) {
		t.Fatalf("Intersect = %v, want %v", got, want)
	}
	if got, want := a.Clip(50, 200), (List{{50, 50}, {200, 50}}); !reflect.DeepEqual(got, want) {
		t.Fatalf("Clip = %v, want %v", got, want)
	}
	if got := a.Clip(100, 100); len(got) != 0 {
		t.Fatalf("Clip of gap = %v, want empty", got)
	}
}

func TestRoundOut(t *testing.T) {
	got := RoundOut(List{{1, 1}, {511, 2}, {2000, 100}}, 512, 2050)
	want := List{{0, 1024}, {1536, 514}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("RoundOut = %v, want %v", got, want)
	}
}

func TestBuild(t *testing.T) {
	in := List{{10, 10}, {20, 5}, {40, 10}}
	got := Build(Normalize(in), 0, 45, Data, Hole)
	want := Map{{0, 10, Hole}, {10, 15, Data}, {25, 15, Hole}, {40, 5, Data}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Build = %v, want %v", got, want)
	}
	if got := Build(nil, 5, 10, Data, Hole|Zero); !reflect.DeepEqual(got, Map{{5, 10, Hole | Zero}}) {
		t.Fatalf("Build(empty) = %v", got)
	}
}
