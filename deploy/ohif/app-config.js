/** OHIF Viewer v3 (3.13.x) configured for dicomsvc: one data source, DICOMweb (PS3.18), and nothing
 * else — no demo servers, no dynamic config, no "investigational use" banner, nothing fetched from
 * any other origin.
 *
 * docker-compose.yml mounts this file as the viewer's /app-config.js; tests/test_ohif.py serves it
 * to headless Chromium with DICOMWEB_ROOT replaced by the test server's root. The URL is the one the
 * *browser* uses: dicomsvc must allow the viewer's origin (DICOMSVC_CORS_ORIGINS).
 */
const DICOMWEB_ROOT = 'http://localhost:8001/dicomweb';

window.config = {
  name: 'dicomsvc',
  routerBasename: null,
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 3,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: { option: 'never' },
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 25 },
  showErrorDetails: 'always',
  defaultDataSourceName: 'dicomsvc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'dicomsvc',
      configuration: {
        friendlyName: 'dicomsvc',
        name: 'dicomsvc',
        // QIDO-RS (PS3.18 §10.6) and WADO-RS (§10.4) share the one root.
        qidoRoot: DICOMWEB_ROOT,
        wadoRoot: DICOMWEB_ROOT,
        wadoUriRoot: DICOMWEB_ROOT,
        qidoSupportsIncludeField: true, // includefield (PS3.18 §8.3.4.3)
        supportsFuzzyMatching: false,
        supportsWildcard: true, // '*' and '?' in PatientName (PS3.4 §C.2.2.2.4)
        supportsReject: false,
        staticWado: false,
        // Series metadata is fetched when a series is opened, not the whole study up front.
        enableStudyLazyLoad: true,
        // Frames through WADO-RS .../frames/{n} (PS3.18 §10.4.1.1.4), decoded in the browser.
        imageRendering: 'wadors',
        // Thumbnails: GET .../series/{series}/thumbnail (PS3.18 §10.4.1.1.5) as image/jpeg.
        thumbnailRendering: 'thumbnail',
        thumbnailRequestStrategy: 'fetch',
        singlepart: 'bulkdata,video',
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true, relativeResolution: 'studies' },
        dicomUploadEnabled: false,
      },
    },
  ],
};
