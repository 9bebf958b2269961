// Hand-written support for the generated types in fluxy_types.go: canonical encoding and a
// JSON Schema validator (standard library only) for the subset of draft 2020-12 that the
// Fluxy bundle uses.

package fluxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/big"
	"regexp"
	"strings"
	"sync"
	"unicode/utf8"
)

// UnknownTypeError reports a frame whose `type` is not a variant of the union. Clients MUST
// ignore server frames of unknown type (FX-VER-5): check for it with errors.As and skip.
type UnknownTypeError struct {
	Union string
	Type  string
}

func (e *UnknownTypeError) Error() string {
	return fmt.Sprintf("fluxy: unknown %s type %q", e.Union, e.Type)
}

// Encode writes v in the canonical wire form: compact, fields in wire order, absent optionals
// omitted, and without encoding/json's HTML escaping of <, > and &.
func Encode(v any) ([]byte, error) { return marshal(v) }

func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// ValidationError says where a document breaks the schema.
type ValidationError struct {
	Path    string
	Message string
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("fluxy: invalid at %q: %s", e.Path, e.Message)
}

var (
	bundleOnce sync.Once
	bundleDefs map[string]any
	bundleErr  error
	patterns   sync.Map // pattern string -> *regexp.Regexp
)

func decodeJSON(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, fmt.Errorf("fluxy: trailing data after the JSON value")
	}
	return v, nil
}

// Validate checks data against the named definition of SchemaBundle ("ClientFrame",
// "ServerFrame", "HistoryPage", …).
func Validate(def string, data []byte) error {
	bundleOnce.Do(func() {
		var b any
		b, bundleErr = decodeJSON([]byte(SchemaBundle))
		if bundleErr == nil {
			m, _ := b.(map[string]any)
			bundleDefs, _ = m["$defs"].(map[string]any)
		}
	})
	if bundleErr != nil {
		return bundleErr
	}
	schema, ok := bundleDefs[def]
	if !ok {
		return fmt.Errorf("fluxy: no definition %q", def)
	}
	doc, err := decodeJSON(data)
	if err != nil {
		return &ValidationError{Path: "", Message: "not JSON: " + err.Error()}
	}
	return check(schema, doc, "")
}

func fail(path, format string, args ...any) error {
	return &ValidationError{Path: path, Message: fmt.Sprintf(format, args...)}
}

func typeOf(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case string:
		return "string"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	case json.Number:
		if r, ok := new(big.Rat).SetString(x.String()); ok && r.IsInt() {
			return "integer"
		}
		return "number"
	}
	return "unknown"
}

func typeMatches(want string, v any) bool {
	got := typeOf(v)
	return got == want || (want == "number" && got == "integer")
}

func num(v any) *big.Rat {
	switch x := v.(type) {
	case json.Number:
		r, _ := new(big.Rat).SetString(x.String())
		return r
	case float64:
		return new(big.Rat).SetFloat64(x)
	}
	return nil
}

func intOf(v any) int {
	if r := num(v); r != nil && r.IsInt() {
		return int(r.Num().Int64())
	}
	return 0
}

func equalJSON(a, b any) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

func check(schemaAny any, v any, path string) error {
	s, ok := schemaAny.(map[string]any)
	if !ok {
		return nil
	}
	if ref, ok := s["$ref"].(string); ok {
		target, ok := bundleDefs[strings.TrimPrefix(ref, "#/$defs/")]
		if !ok {
			return fail(path, "unresolved $ref %s", ref)
		}
		if err := check(target, v, path); err != nil {
			return err
		}
	}
	if t, ok := s["type"]; ok {
		var kinds []any
		if list, ok := t.([]any); ok {
			kinds = list
		} else {
			kinds = []any{t}
		}
		matched := false
		for _, k := range kinds {
			if ks, _ := k.(string); typeMatches(ks, v) {
				matched = true
			}
		}
		if !matched {
			return fail(path, "type %s, want %v", typeOf(v), t)
		}
	}
	if c, ok := s["const"]; ok && !equalJSON(c, v) {
		return fail(path, "must be %v", c)
	}
	if e, ok := s["enum"].([]any); ok {
		found := false
		for _, x := range e {
			found = found || equalJSON(x, v)
		}
		if !found {
			return fail(path, "not one of %v", e)
		}
	}
	if all, ok := s["allOf"].([]any); ok {
		for _, sub := range all {
			if err := check(sub, v, path); err != nil {
				return err
			}
		}
	}
	if anyOf, ok := s["anyOf"].([]any); ok {
		var first error
		matched := false
		for _, sub := range anyOf {
			if err := check(sub, v, path); err == nil {
				matched = true
				break
			} else if first == nil {
				first = err
			}
		}
		if !matched {
			return first
		}
	}
	if disc, ok := s["discriminator"].(map[string]any); ok {
		// A tagged union: dispatch on the tag, so that an unknown `type` is recognisable
		// (clients ignore unknown server frames, FX-VER-5) and errors name the variant.
		if obj, ok := v.(map[string]any); ok {
			prop, _ := disc["propertyName"].(string)
			tag, isString := obj[prop].(string)
			if !isString {
				return fail(path, "missing or non-string %q", prop)
			}
			union, _ := s["title"].(string)
			variants, _ := s["oneOf"].([]any)
			for _, variant := range variants {
				ref, _ := variant.(map[string]any)["$ref"].(string)
				def, _ := bundleDefs[strings.TrimPrefix(ref, "#/$defs/")].(map[string]any)
				props, _ := def["properties"].(map[string]any)
				tagSchema, _ := props[prop].(map[string]any)
				if tagSchema["const"] == tag {
					return check(variant, v, path)
				}
			}
			return &UnknownTypeError{Union: union, Type: tag}
		}
	}
	if oneOf, ok := s["oneOf"].([]any); ok {
		n := 0
		var last error
		for _, sub := range oneOf {
			if err := check(sub, v, path); err == nil {
				n++
			} else {
				last = err
			}
		}
		if n != 1 {
			if n == 0 && len(oneOf) > 0 && s["discriminator"] == nil {
				return last
			}
			return fail(path, "matches %d of the oneOf alternatives, want exactly 1", n)
		}
	}
	if cond, ok := s["if"]; ok {
		if check(cond, v, path) == nil {
			if then, ok := s["then"]; ok {
				if err := check(then, v, path); err != nil {
					return err
				}
			}
		} else if els, ok := s["else"]; ok {
			if err := check(els, v, path); err != nil {
				return err
			}
		}
	}
	switch x := v.(type) {
	case string:
		n := utf8.RuneCountInString(x)
		if m, ok := s["minLength"]; ok && n < intOf(m) {
			return fail(path, "shorter than %v characters", m)
		}
		if m, ok := s["maxLength"]; ok && n > intOf(m) {
			return fail(path, "longer than %v characters", m)
		}
		if p, ok := s["pattern"].(string); ok {
			re, err := compiled(p)
			if err != nil {
				return fail(path, "bad pattern %q: %v", p, err)
			}
			if !re.MatchString(x) {
				return fail(path, "does not match %s", p)
			}
		}
	case json.Number:
		if m, ok := s["minimum"]; ok && num(x).Cmp(num(m)) < 0 {
			return fail(path, "below the minimum %v", m)
		}
		if m, ok := s["maximum"]; ok && num(x).Cmp(num(m)) > 0 {
			return fail(path, "above the maximum %v", m)
		}
	case []any:
		if m, ok := s["minItems"]; ok && len(x) < intOf(m) {
			return fail(path, "fewer than %v items", m)
		}
		if m, ok := s["maxItems"]; ok && len(x) > intOf(m) {
			return fail(path, "more than %v items", m)
		}
		if items, ok := s["items"]; ok {
			for i, item := range x {
				if err := check(items, item, fmt.Sprintf("%s/%d", path, i)); err != nil {
					return err
				}
			}
		}
	case map[string]any:
		if req, ok := s["required"].([]any); ok {
			for _, r := range req {
				if name, _ := r.(string); name != "" {
					if _, present := x[name]; !present {
						return fail(path, "missing required property %q", name)
					}
				}
			}
		}
		props, _ := s["properties"].(map[string]any)
		for k, val := range x {
			if sub, ok := props[k]; ok {
				if err := check(sub, val, path+"/"+k); err != nil {
					return err
				}
			} else if ap, ok := s["additionalProperties"]; ok {
				if err := check(ap, val, path+"/"+k); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func compiled(p string) (*regexp.Regexp, error) {
	if re, ok := patterns.Load(p); ok {
		return re.(*regexp.Regexp), nil
	}
	re, err := regexp.Compile(p)
	if err != nil {
		return nil, err
	}
	patterns.Store(p, re)
	return re, nil
}
