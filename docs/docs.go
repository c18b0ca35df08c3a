// Package docs holds the API's OpenAPI 3.0.3 document, openapi.json, which
// make docs builds from the handlers' annotations (swag writes the Swagger
// 2.0 swagger.json, tools/cmd/openapi converts and completes it). Importing the
// package registers the document with swag, whose Swagger UI handler
// serves it at /swagger/doc.json.
package docs

import (
	_ "embed"

	"github.com/swaggo/swag"
)

//go:embed openapi.json
var openAPI string

type document struct{}

func (document) ReadDoc() string { return openAPI }

func init() { swag.Register(swag.Name, document{}) }
