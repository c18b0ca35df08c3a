// The change's example adds and removes segments by the spec's example
// slugs; create those that do not exist yet (409 means they do).
for (const slug of ['AVITO_VOICE_MESSAGES', 'AVITO_DISCOUNT_30', 'AVITO_PERFORMANCE_VAS']) {
  pm.sendRequest({
    url: pm.collectionVariables.get('baseUrl') + '/segments',
    method: 'POST',
    header: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + pm.environment.get('token') },
    body: { mode: 'raw', raw: JSON.stringify({ slug }) },
  }, (err, res) => {
    if (err || (res.code !== 201 && res.code !== 409)) {
      throw new Error('creating ' + slug + ': ' + (err || res.code));
    }
  });
}
